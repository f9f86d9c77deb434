import styles from "./pagination.module.css";

export function Pagination({
  total,
  limit,
  offset,
  label,
  onChange,
}: {
  total: number;
  limit: number;
  offset: number;
  label: string;
  onChange(offset: number): void;
}) {
  if (total <= limit && offset === 0) return null;
  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + limit, total);
  return (
    <nav className={styles.pagination} aria-label={label}>
      <span className="muted">
        {first}–{last} of {total}
      </span>
      <div className={styles.buttons}>
        <button
          type="button"
          className="btn btn-small"
          disabled={offset === 0}
          onClick={() => onChange(Math.max(0, offset - limit))}
        >
          Previous
        </button>
        <button
          type="button"
          className="btn btn-small"
          disabled={offset + limit >= total}
          onClick={() => onChange(offset + limit)}
        >
          Next
        </button>
      </div>
    </nav>
  );
}
