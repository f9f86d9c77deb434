// promql-check parses the PromQL expressions of our alerting rules with Prometheus' own parser, so
// that a typo in deploy/k8s/overlays/prod/prometheusrule.yaml fails `make k8s-validate` instead of
// silently never firing. Input on stdin: a JSON list of {"name", "expr"}; one line per bad expression.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

type rule struct {
	Name string `json:"name"`
	Expr string `json:"expr"`
}

func main() {
	var rules []rule
	if err := json.NewDecoder(os.Stdin).Decode(&rules); err != nil {
		fmt.Fprintln(os.Stderr, "promql-check: reading rules:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	bad := 0
	for _, r := range rules {
		if _, err := p.ParseExpr(r.Expr); err != nil {
			fmt.Printf("FAIL %s: %v\n", r.Name, err)
			bad++
		}
	}
	if bad > 0 {
		os.Exit(1)
	}
	fmt.Printf("promql-check: %d expressions parse\n", len(rules))
}
