/**
 * Where the console goes after sign-in. The `next` query parameter comes from the link that was
 * followed, so it is only honoured when it stays on this site: otherwise a crafted link could send
 * a user who just signed in to a look-alike page.
 */

export const DEFAULT_AFTER_SIGN_IN = "/agents";

/**
 * The path on `origin` that `next` leads to, or the default page. `next` is resolved the way the
 * browser would resolve it, since string checks miss forms such as `/\evil.example`, which browsers
 * read as `//evil.example`.
 */
export function afterSignInPath(next: string | null, origin: string): string {
  if (!next) return DEFAULT_AFTER_SIGN_IN;
  let target: URL;
  try {
    target = new URL(next, origin);
  } catch {
    return DEFAULT_AFTER_SIGN_IN;
  }
  if (target.origin !== origin) return DEFAULT_AFTER_SIGN_IN;
  return `${target.pathname}${target.search}${target.hash}`;
}
