//! Text that strangers wrote, made safe to print on a terminal: a runner's output is a CI
//! job's, and a job can print escape sequences that move the cursor, rewrite lines already on
//! screen, set the window title, or (on some terminals) send keys back. [`Sanitizer`] keeps
//! the text and drops every terminal escape sequence (CSI `ESC [ … final`, OSC
//! `ESC ] … BEL|ESC \`, DCS/SOS/PM/APC strings up to `ESC \`, and two-byte `ESC x`), every
//! other control character but newline and tab (C1 controls included, which some terminals
//! take as `ESC [`), and the Unicode controls that reorder text on screen (bidirectional
//! overrides and isolates). A sequence cut between two chunks is still dropped whole.

/// Where the sanitizer is, between two chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Plain text.
    #[default]
    Text,
    /// After `ESC`.
    Escape,
    /// In a CSI sequence, until its final byte.
    Csi,
    /// In a string (OSC, DCS, SOS, PM, APC), until BEL or `ESC \`.
    String,
    /// In a string, after `ESC`.
    StringEscape,
}

/// Strips terminal control from a stream of text fed in chunks.
#[derive(Debug, Default)]
pub struct Sanitizer {
    state: State,
}

impl Sanitizer {
    pub fn new() -> Sanitizer {
        Sanitizer::default()
    }

    /// The printable part of the next chunk.
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            self.state = match (self.state, c) {
                (State::Text, '\u{1b}') => State::Escape,
                // The C1 forms of CSI, and of DCS, SOS, OSC, PM and APC.
                (State::Text, '\u{9b}') => State::Csi,
                (State::Text, '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}') => {
                    State::String
                }
                (State::Text, c) => {
                    if shown(c) {
                        out.push(c);
                    }
                    State::Text
                }
                (State::Escape, '[') => State::Csi,
                (State::Escape, ']' | 'P' | 'X' | '^' | '_') => State::String,
                // `ESC x`: one more character, dropped with it.
                (State::Escape, _) => State::Text,
                (State::Csi, '@'..='~') => State::Text,
                (State::Csi, _) => State::Csi,
                (State::String, '\u{7}' | '\u{9c}') => State::Text,
                (State::String, '\u{1b}') => State::StringEscape,
                (State::String, _) => State::String,
                (State::StringEscape, '\\') => State::Text,
                (State::StringEscape, _) => State::String,
            };
        }
        out
    }
}

/// Whether a character of plain text is printed.
fn shown(c: char) -> bool {
    match c {
        '\n' | '\t' => true,
        // Bidirectional embeddings, overrides and isolates: they reorder what is on screen.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => false,
        c => !c.is_control(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Colours, cursor moves, titles, hyperlinks, C1 controls and bidi overrides go; text,
    /// newlines and tabs stay.
    #[test]
    fn strips_terminal_control() {
        let mut sanitizer = Sanitizer::new();
        let text = "\x1b[31mred\x1b[0m\tok\r\n\x1b]0;pwned\x07title\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\n\
                    \x1b[2J\x1b[1;1Hcleared\u{9b}31m\u{202e}gnp.exe\x08\x1bcend\n";
        assert_eq!(
            sanitizer.push(text),
            "red\tok\ntitlelink\nclearedgnp.exeend\n"
        );
    }

    /// A sequence cut anywhere between chunks is dropped whole.
    #[test]
    fn sequences_across_chunks() {
        let text = "a\x1b[38;5;196mb\x1b]0;t\x1b\\c";
        for split in 0..=text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            let mut sanitizer = Sanitizer::new();
            let (first, second) = text.split_at(split);
            let out = sanitizer.push(first) + &sanitizer.push(second);
            assert_eq!(out, "abc", "split at {split}");
        }
    }
}
