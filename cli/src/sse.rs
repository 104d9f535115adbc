//! A Server-Sent Events parser (the `text/event-stream` format of the HTML standard), fed the
//! body's chunks as they arrive.
//!
//! Lines end in `\n`, `\r\n` or `\r` (also split across chunks). A line `field: value` (one
//! space after the colon is dropped) sets `event`, appends to `data` (lines joined with `\n`)
//! or sets `id`; `retry` and unknown fields are ignored; a line starting with `:` is a
//! comment (berth's keep-alives). A blank line ends the event; an event without `data` is not
//! one. The last `id` seen carries over to later events, as the standard says. A message with
//! an `id` but no data dispatches nothing; berth opens a stream that starts from now with one,
//! and [`Parser::take_bare_id`] hands it over. (A half event is lost with its connection; a new
//! connection gets a new parser.)

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `id` in effect (the event's own, or the last one before it).
    pub id: Option<String>,
    /// The `event` field; `message` when the event named none.
    pub kind: String,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// The bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs to that line end.
    after_cr: bool,
    /// At the very start of the stream (a byte-order mark there is dropped).
    started: bool,
    /// The last `id` field seen.
    id: Option<String>,
    kind: String,
    data: String,
    has_data: bool,
    /// The message being read set an `id`.
    has_id: bool,
    /// The `id` of the last message that had no data, until taken.
    bare_id: Option<String>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// The `id` of the last message without data since the previous call (berth's "the stream
    /// starts after this event").
    pub fn take_bare_id(&mut self) -> Option<String> {
        self.bare_id.take()
    }

    /// Feeds the next chunk of the body; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut bytes = chunk;
        if !self.started && !bytes.is_empty() {
            self.started = true;
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn line_ended(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let kind = std::mem::take(&mut self.kind);
            let data = std::mem::take(&mut self.data);
            let has_id = std::mem::take(&mut self.has_id);
            if !std::mem::take(&mut self.has_data) {
                if has_id {
                    self.bare_id.clone_from(&self.id);
                }
                return None;
            }
            return Some(Event {
                id: self.id.clone(),
                kind: if kind.is_empty() {
                    "message".to_owned()
                } else {
                    kind
                },
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.kind),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.has_id = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: &str, data: &str) -> Event {
        Event {
            id: Some(id.to_owned()),
            kind: kind.to_owned(),
            data: data.to_owned(),
        }
    }

    /// Fields make an event at the blank line; comments (keep-alives) make none.
    #[test]
    fn events_end_at_a_blank_line() {
        let mut parser = Parser::new();
        let text = ":keep-alive\n\nid: 1\nevent: lease.granted\ndata: {\"a\":1}\n\n:\n\n";
        assert_eq!(
            parser.push(text.as_bytes()),
            vec![event("1", "lease.granted", "{\"a\":1}")]
        );
    }

    /// An event split anywhere across chunks, with CRLF or lone CR line ends, is the same
    /// event.
    #[test]
    fn chunks_and_line_ends() {
        let text = "id: 7\r\nevent: lease.ready\rdata: x\r\n\r\nid:8\ndata:y\n\n";
        let whole = Parser::new().push(text.as_bytes());
        assert_eq!(
            whole,
            vec![event("7", "lease.ready", "x"), event("8", "message", "y")]
        );
        for split in 0..=text.len() {
            let mut parser = Parser::new();
            let (a, b) = text.as_bytes().split_at(split);
            let mut got = parser.push(a);
            got.extend(parser.push(b));
            assert_eq!(got, whole, "split at {split}");
        }
    }

    /// A message with only an `id` dispatches nothing; its id is handed over once.
    #[test]
    fn bare_ids() {
        let mut parser = Parser::new();
        assert!(parser.push(b"id: 12\n\n:keep-alive\n\n").is_empty());
        assert_eq!(parser.take_bare_id().as_deref(), Some("12"));
        assert_eq!(parser.take_bare_id(), None);
        assert_eq!(
            parser.push(b"id: 13\ndata: x\n\n"),
            vec![event("13", "message", "x")]
        );
        assert_eq!(parser.take_bare_id(), None);
    }

    /// Data lines join with `\n`; an event without data is dropped; the last id carries over
    /// to events without one.
    #[test]
    fn data_lines_and_ids() {
        let mut parser = Parser::new();
        assert_eq!(
            parser.push(b"id: 3\ndata: a\ndata:  b\ndata\n\nevent: x\n\ndata: c\n\n"),
            vec![event("3", "message", "a\n b\n"), event("3", "message", "c")]
        );
        assert!(parser.push(b"id: 4\n").is_empty());
        assert_eq!(
            parser.push(b"data: d\n\nevent: e\ndata: f\n\n"),
            vec![event("4", "message", "d"), event("4", "e", "f")]
        );
    }
}
