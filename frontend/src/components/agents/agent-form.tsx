"use client";

import { useState, type FormEvent, type ReactNode } from "react";

import {
  validateAgentForm,
  type AgentFormField,
  type AgentFormValues,
} from "@/lib/agent-form";
import { ApiError, type FieldErrors } from "@/services/api-client";
import type { AgentCreate } from "@/services/types";

import styles from "./agent-form.module.css";

const TOOLS_EXAMPLE = `[
  {
    "name": "lookup_order",
    "description": "Find an order by its number",
    "url": "https://example.com/hooks/orders",
    "method": "POST",
    "timeout_seconds": 5,
    "parameters": {
      "type": "object",
      "properties": { "order_number": { "type": "string" } },
      "required": ["order_number"]
    },
    "secret_ref": "orders_webhook"
  }
]`;

interface FieldProps {
  id: AgentFormField;
  label: string;
  hint?: ReactNode;
  errors?: string[];
  children: (aria: { id: string; "aria-invalid": boolean; "aria-describedby"?: string }) => ReactNode;
}

function Field({ id, label, hint, errors, children }: FieldProps) {
  const hintId = hint ? `${id}-hint` : undefined;
  const errorId = errors && errors.length > 0 ? `${id}-error` : undefined;
  const describedBy = [hintId, errorId].filter(Boolean).join(" ") || undefined;
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children({ id, "aria-invalid": Boolean(errorId), "aria-describedby": describedBy })}
      {hint && (
        <span id={hintId} className="hint">
          {hint}
        </span>
      )}
      {errorId && (
        <ul id={errorId} className="error" role="alert">
          {errors!.map((message) => (
            <li key={message}>{message}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function AgentForm({
  initialValues,
  submitLabel,
  onSubmit,
  onCancel,
}: {
  initialValues: AgentFormValues;
  submitLabel: string;
  onSubmit(agent: AgentCreate): Promise<void>;
  onCancel(): void;
}) {
  const [values, setValues] = useState(initialValues);
  const [errors, setErrors] = useState<FieldErrors>({});
  const [formError, setFormError] = useState<string | null>(null);
  const [submitting, setSubmitting] = useState(false);

  const set = (field: AgentFormField) => (event: { target: { value: string } }) =>
    setValues((previous) => ({ ...previous, [field]: event.target.value }));

  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setFormError(null);
    const { agent, errors: found } = validateAgentForm(values);
    setErrors(found);
    if (!agent) {
      setFormError("Some fields need attention.");
      return;
    }
    setSubmitting(true);
    try {
      await onSubmit(agent);
    } catch (cause) {
      if (cause instanceof ApiError && Object.keys(cause.fieldErrors).length > 0) {
        const { _form: general, ...byField } = cause.fieldErrors;
        const unknown = Object.entries(byField)
          .filter(([field]) => !(field in values))
          .flatMap(([, messages]) => messages);
        setErrors(byField);
        setFormError([...(general ?? []), ...unknown].join(" ") || "The server did not accept some fields.");
      } else if (cause instanceof ApiError) {
        setFormError(cause.detail);
      } else {
        setFormError("Saving failed. Try again.");
      }
    } finally {
      setSubmitting(false);
    }
  }

  return (
    <form className={styles.form} onSubmit={submit} noValidate>
      {formError && (
        <p className="alert alert-error" role="alert">
          {formError}
        </p>
      )}
      <section className="card">
        <div className="card-header">
          <h2>Basics</h2>
        </div>
        <div className={`card-body ${styles.grid}`}>
          <Field id="name" label="Name" errors={errors.name}>
            {(aria) => <input {...aria} className="input" value={values.name} onChange={set("name")} required />}
          </Field>
          <Field id="language" label="Language" hint="A language code such as en or en-US." errors={errors.language}>
            {(aria) => <input {...aria} className="input" value={values.language} onChange={set("language")} />}
          </Field>
          <div className={styles.wide}>
            <Field
              id="instructions"
              label="Instructions"
              hint="The system prompt: who the agent is and how it should behave."
              errors={errors.instructions}
            >
              {(aria) => (
                <textarea
                  {...aria}
                  className="textarea"
                  rows={6}
                  value={values.instructions}
                  onChange={set("instructions")}
                />
              )}
            </Field>
          </div>
          <div className={styles.wide}>
            <Field
              id="first_message"
              label="First message"
              hint="Spoken as soon as the call starts. Leave empty to let the caller speak first."
              errors={errors.first_message}
            >
              {(aria) => (
                <textarea
                  {...aria}
                  className="textarea"
                  rows={2}
                  value={values.first_message}
                  onChange={set("first_message")}
                />
              )}
            </Field>
          </div>
        </div>
      </section>

      <section className="card">
        <div className="card-header">
          <h2>Voice and models</h2>
        </div>
        <div className={`card-body ${styles.grid}`}>
          <Field id="voice" label="Voice" errors={errors.voice}>
            {(aria) => <input {...aria} className="input" value={values.voice} onChange={set("voice")} />}
          </Field>
          <Field id="temperature" label="Temperature" hint="0 to 2; lower is more predictable." errors={errors.temperature}>
            {(aria) => (
              <input
                {...aria}
                className="input"
                type="number"
                inputMode="decimal"
                step="0.1"
                min="0"
                max="2"
                value={values.temperature}
                onChange={set("temperature")}
              />
            )}
          </Field>
          <Field id="stt_model" label="Speech-to-text model" errors={errors.stt_model}>
            {(aria) => <input {...aria} className="input" value={values.stt_model} onChange={set("stt_model")} />}
          </Field>
          <Field id="llm_model" label="Language model" errors={errors.llm_model}>
            {(aria) => <input {...aria} className="input" value={values.llm_model} onChange={set("llm_model")} />}
          </Field>
          <Field id="tts_model" label="Text-to-speech model" errors={errors.tts_model}>
            {(aria) => <input {...aria} className="input" value={values.tts_model} onChange={set("tts_model")} />}
          </Field>
        </div>
      </section>

      <section className="card">
        <div className="card-header">
          <h2>Tools</h2>
        </div>
        <div className="card-body">
          <Field
            id="tools"
            label="Webhook tools (JSON)"
            hint={
              <>
                A JSON array. Each tool: name, description, url, and optionally method, timeout_seconds (≤ 30),
                parameters (a JSON Schema object) and secret_ref (the name of the signing secret). Example:
                <pre className={styles.example}>{TOOLS_EXAMPLE}</pre>
              </>
            }
            errors={errors.tools}
          >
            {(aria) => (
              <textarea
                {...aria}
                className="textarea code"
                rows={10}
                spellCheck={false}
                value={values.tools}
                onChange={set("tools")}
              />
            )}
          </Field>
        </div>
      </section>

      <div className={styles.actions}>
        <button type="button" className="btn" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" className="btn btn-primary" disabled={submitting}>
          {submitting ? "Saving…" : submitLabel}
        </button>
      </div>
    </form>
  );
}
