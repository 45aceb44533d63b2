//! JSON log lines, one object per event. The shape is the one
//! tracing-subscriber's JSON format writes with flattened events:
//! - `timestamp` and `level`;
//! - the event's fields, `message` among them;
//! - `target`;
//! - `spans`, outermost first: each span's fields plus its `name`.
//!
//! Fields are written straight into the line, escaped by serde_json. The
//! stock formatter collects each event's fields into a map of owned JSON
//! values, then re-parses every span's stored fields. At one access line per
//! short connection that was most of the line's 9% of an agent's CPU (see
//! BENCHMARKS.md, stop 8).

use std::fmt;

use serde::Serializer as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// A `fmt` layer that writes these lines to stdout.
pub fn layer<S>() -> tracing_subscriber::fmt::Layer<S, JsonFields, JsonLines>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().fmt_fields(JsonFields).event_format(JsonLines)
}

/// The event format; spans' fields must be stored by [`JsonFields`] (see
/// [`layer`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

/// How span fields are stored: `"key":value` pairs, comma-separated, ready
/// to be placed inside an object.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        writer.write_str(pairs.as_str()?)
    }

    /// Fields recorded on a span after it was created join the others (the
    /// default joins them with a space, which is not JSON).
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut pairs = Pairs { first: current.fields.is_empty(), ..Pairs::default() };
        fields.record(&mut pairs);
        current.fields.push_str(pairs.as_str()?);
        Ok(())
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = Pairs::default();
        line.pair("timestamp", &timestamp);
        line.pair("level", meta.level().as_str());
        event.record(&mut line);
        line.pair("target", meta.target());
        if let Some(scope) = ctx.event_scope() {
            line.key("spans");
            line.buf.push(b'[');
            for (i, span) in scope.from_root().enumerate() {
                if i > 0 {
                    line.buf.push(b',');
                }
                line.buf.push(b'{');
                let extensions = span.extensions();
                let stored = extensions.get::<FormattedFields<JsonFields>>().map_or("", |f| f.fields.as_str());
                line.buf.extend_from_slice(stored.as_bytes());
                line.first = stored.is_empty();
                line.pair("name", span.name());
                line.buf.push(b'}');
            }
            line.buf.push(b']');
        }
        writer.write_char('{')?;
        writer.write_str(line.as_str()?)?;
        writer.write_str("}\n")
    }
}

/// `"key":value` pairs being written; serde_json escapes keys and values.
#[derive(Debug)]
struct Pairs {
    buf: Vec<u8>,
    first: bool,
    /// serde_json refused a value (it cannot for these types; kept honest).
    failed: bool,
}

impl Default for Pairs {
    fn default() -> Self {
        Self { buf: Vec::with_capacity(512), first: true, failed: false }
    }
}

impl Pairs {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.failed |= serde_json::to_writer(&mut self.buf, key).is_err();
        self.buf.push(b':');
    }

    fn pair<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.key(key);
        self.failed |= serde_json::to_writer(&mut self.buf, value).is_err();
    }

    fn as_str(&self) -> Result<&str, fmt::Error> {
        if self.failed {
            return Err(fmt::Error);
        }
        std::str::from_utf8(&self.buf).map_err(|_| fmt::Error)
    }
}

/// Shows a `Debug` value through `Display`, for serde's `collect_str`.
struct DebugText<'a>(&'a dyn fmt::Debug);

impl fmt::Display for DebugText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Visit for Pairs {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field.name());
        // Escapes as it formats: no intermediate String.
        let mut serializer = serde_json::Serializer::new(&mut self.buf);
        self.failed |= serializer.collect_str(&DebugText(value)).is_err();
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field.name(), &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field.name(), &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.pair(field.name(), &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field.name(), &value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<Value> {
        let sink = Sink::default();
        let writer = sink.clone();
        let layer = layer().with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn events_are_flat_json_with_their_spans() {
        let records = lines(|| {
            let outer = tracing::info_span!("outbound", id = 7u64, src = %"10.0.0.1:5");
            let _outer = outer.enter();
            let inner = tracing::info_span!("stream", authority = "a\"b", late = tracing::field::Empty);
            let _inner = inner.enter();
            inner.record("late", "later");
            tracing::info!(target: "access", text = "quote \" and\nnewline", shown = %"display", n = 3u64,
                negative = -2i64, ok = true, ratio = 0.5, "connection {}", "complete");
        });
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(record["level"], "INFO");
        assert_eq!(record["target"], "access");
        assert_eq!(record["message"], "connection complete");
        assert_eq!(record["text"], "quote \" and\nnewline");
        assert_eq!(record["shown"], "display");
        assert_eq!((record["n"].clone(), record["negative"].clone()), (json!(3), json!(-2)));
        assert_eq!((record["ok"].clone(), record["ratio"].clone()), (json!(true), json!(0.5)));
        assert!(record["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{record}");
        assert_eq!(record["spans"][0], json!({"id": 7, "src": "10.0.0.1:5", "name": "outbound"}));
        assert_eq!(record["spans"][1]["name"], "stream");
        assert_eq!(record["spans"][1]["authority"], "a\"b");
        assert_eq!(record["spans"][1]["late"], "later");
    }

    #[test]
    fn events_outside_spans_have_no_span_list() {
        let records = lines(|| tracing::warn!(reason = "none", "alone"));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["level"], "WARN");
        assert_eq!(records[0]["message"], "alone");
        assert!(records[0].get("spans").is_none(), "{}", records[0]);
    }
}
