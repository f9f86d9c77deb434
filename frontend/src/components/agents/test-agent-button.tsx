import styles from "./test-agent-button.module.css";

/** The Test Agent button; an inactive agent cannot take calls, so it is disabled with the reason shown. */
export function TestAgentButton({ active, onStart }: { active: boolean; onStart(): void }) {
  const reason = active ? null : "This agent is inactive. Activate it to start a test call.";
  return (
    <div className={styles.action}>
      <button
        type="button"
        className="btn btn-primary"
        onClick={onStart}
        disabled={!active}
        aria-describedby={reason ? "test-disabled-reason" : undefined}
      >
        Test Agent
      </button>
      {reason && (
        <span id="test-disabled-reason" className={styles.reason}>
          {reason}
        </span>
      )}
    </div>
  );
}
