import type { AgentRead } from "@/services/types";

import styles from "./agent-config.module.css";

export function AgentConfig({ agent }: { agent: AgentRead }) {
  const settings: [string, string][] = [
    ["Language", agent.language],
    ["Voice", agent.voice],
    ["Speech-to-text", agent.stt_model],
    ["Language model", agent.llm_model],
    ["Text-to-speech", agent.tts_model],
    ["Temperature", String(agent.temperature)],
    ["Phone numbers", agent.phone_numbers.length > 0 ? agent.phone_numbers.join(", ") : "None"],
  ];
  return (
    <section className="card" aria-labelledby="config-title">
      <div className="card-header">
        <h2 id="config-title">Configuration</h2>
      </div>
      <div className={`card-body ${styles.body}`}>
        <dl className={styles.settings}>
          {settings.map(([label, value]) => (
            <div key={label} className={styles.setting}>
              <dt>{label}</dt>
              <dd className={label === "Temperature" || label === "Language" ? "" : "mono"}>{value}</dd>
            </div>
          ))}
        </dl>
        <div>
          <h3 className={styles.heading}>Instructions</h3>
          <pre className={styles.block}>{agent.instructions}</pre>
        </div>
        <div>
          <h3 className={styles.heading}>First message</h3>
          <p className={styles.block}>{agent.first_message || <span className="muted">None: the caller speaks first.</span>}</p>
        </div>
        <div>
          <h3 className={styles.heading}>Tools</h3>
          {agent.tools.length === 0 ? (
            <p className="muted">No webhook tools. The agent can always end the call.</p>
          ) : (
            <ul className={styles.tools}>
              {agent.tools.map((tool) => (
                <li key={tool.name}>
                  <span className="mono">{tool.name}</span>
                  <span className="muted">
                    {" "}
                    — {tool.description} ({tool.method ?? "POST"} <span className="mono">{tool.url}</span>)
                  </span>
                </li>
              ))}
            </ul>
          )}
        </div>
      </div>
    </section>
  );
}
