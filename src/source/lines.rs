//! The replay's source: events as lines from a file or stdin, one line at a time and bounded, so
//! one huge line cannot take the memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// An open input and its length in bytes when known (a file; not stdin).
pub type LineInput = (Box<dyn BufRead>, Option<u64>);

/// Opens `path` for reading lines, `-` being stdin, with a 1 MiB buffer.
pub fn open(path: &Path) -> io::Result<LineInput> {
    if path.as_os_str() == "-" {
        return Ok((
            Box::new(BufReader::with_capacity(1 << 20, io::stdin().lock())),
            None,
        ));
    }
    let f = File::open(path)?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), len))
}

/// Reads one line (with its newline) onto `buf`, keeping at most `max + 1` bytes of it: a longer
/// line is read to its end but not kept, so one huge line cannot take the memory. Returns the
/// bytes read (0 at the end of the input) and, when the line was cut, its length.
pub fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<(usize, Option<usize>)> {
    // The line's length without its newline, counted in full, and how much of it is kept.
    let (mut read, mut content) = (0usize, 0usize);
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((read, (content > max).then_some(content)));
        }
        let (part, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        let room = (max + 1).saturating_sub(content);
        buf.extend_from_slice(&part[..part.len().min(room)]);
        content += part.len() - usize::from(done);
        let n = part.len();
        read += n;
        input.consume(n);
        if done {
            return Ok((read, (content > max).then_some(content)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_the_maximum_is_read_through_but_not_kept() {
        let text = format!("{}\nok\nlast", "x".repeat(10_000));
        let mut input = io::BufReader::with_capacity(64, text.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, &mut buf, 100).ok(),
            Some((10_001, Some(10_000)))
        );
        assert!(buf.len() <= 101, "{}", buf.len());
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut buf, 100).ok(),
            Some((3, None))
        );
        assert_eq!(buf, b"ok\n");
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut buf, 4).ok(),
            Some((4, None))
        );
        assert_eq!(buf, b"last");
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut buf, 4).ok(),
            Some((0, None))
        );
        // Exactly the maximum is kept whole.
        let mut input = io::BufReader::new(&b"abcd\n"[..]);
        assert_eq!(
            read_line_bounded(&mut input, &mut buf, 4).ok(),
            Some((5, None))
        );
        assert_eq!(buf, b"abcd\n");
    }
}
