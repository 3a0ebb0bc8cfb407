//! Log lines on stderr: JSON, or text on a terminal. While traces are
//! exported, a line written inside a request carries the request span's
//! `trace_id` and `span_id` (and no other span field).

/// Log lines as text, on a terminal.
pub(super) fn text_layer<S>(terminal: bool) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    terminal.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
}

/// The span fields the JSON log lines carry: `trace_id` and `span_id` only
/// (the rest is for traces). The stock JSON field formatter re-parses a
/// span's fields on every `record`; this one ignores every other field.
#[derive(Debug, Default)]
struct TraceIds;

#[derive(Default)]
struct IdsVisitor {
    ids: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for IdsVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            self.ids.push((field.name(), format!("{value:?}")));
        }
    }
}

impl IdsVisitor {
    /// Appends `"name":"value"` pairs to a JSON object's text (`{}` if empty).
    fn merge_into(self, object: &mut String) {
        if self.ids.is_empty() {
            return;
        }
        if object == "{}" {
            object.clear();
        }
        if object.ends_with('}') {
            object.pop();
        }
        for (name, value) in self.ids {
            object.push(if object.is_empty() { '{' } else { ',' });
            object.push_str(&serde_json::json!({ name: value }).to_string()[1..]);
            object.pop();
        }
        object.push('}');
    }
}

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TraceIds {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut ids = IdsVisitor::default();
        fields.record(&mut ids);
        let mut object = String::new();
        ids.merge_into(&mut object);
        writer.write_str(if object.is_empty() { "{}" } else { &object })
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut ids = IdsVisitor::default();
        fields.record(&mut ids);
        ids.merge_into(&mut current.fields);
        Ok(())
    }
}

/// Log lines as JSON, with the current span's trace ids.
pub(super) fn json_layer<S>(terminal: bool) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    (!terminal).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(TraceIds)
            .with_writer(std::io::stderr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_get_the_trace_ids_as_a_json_object() {
        let mut object = String::new();
        let ids = |pairs: &[(&'static str, &str)]| IdsVisitor {
            ids: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        ids(&[]).merge_into(&mut object);
        assert_eq!(object, "");
        object.push_str("{}");
        ids(&[]).merge_into(&mut object);
        assert_eq!(object, "{}");
        ids(&[("trace_id", "ab")]).merge_into(&mut object);
        assert_eq!(object, r#"{"trace_id":"ab"}"#);
        ids(&[("span_id", "c\"\"")]).merge_into(&mut object);
        assert_eq!(object, r#"{"trace_id":"ab","span_id":"c\"\""}"#);
        let parsed: serde_json::Value = serde_json::from_str(&object).expect("JSON");
        assert_eq!(parsed["span_id"], "c\"\"");
    }
}
