import { describe, expect, it } from "vitest";

import { afterSignInPath, DEFAULT_AFTER_SIGN_IN } from "@/lib/sign-in-redirect";

const ORIGIN = "https://console.example.test";

describe("afterSignInPath", () => {
  it("follows a path on this site, with its query", () => {
    expect(afterSignInPath("/agents/1?x=1", ORIGIN)).toBe("/agents/1?x=1");
  });

  it.each([
    ["a backslash that URL resolution turns into a host", "/\\evil.example"],
    ["a protocol-relative URL", "//evil.example"],
    ["an absolute URL", "https://evil.example"],
    ["a script URL", "javascript:alert(1)"],
  ])("goes to the default page for %s", (_case, next) => {
    expect(afterSignInPath(next, ORIGIN)).toBe(DEFAULT_AFTER_SIGN_IN);
  });

  it("goes to the default page when there is no next", () => {
    expect(afterSignInPath(null, ORIGIN)).toBe(DEFAULT_AFTER_SIGN_IN);
  });
});
