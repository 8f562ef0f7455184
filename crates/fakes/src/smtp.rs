//! A fake SMTP server, an SMTP sink: it speaks plaintext ESMTP (RFC 5321,
//! with `PIPELINING`, `8BITMIME`, `SIZE` and `SMTPUTF8`) on a loopback
//! port, accepts every message it is allowed to, parses it with
//! `mail-parser` and keeps it for tests to look at, and can inject the
//! faults a real relay shows: slow replies, rejected recipients, temporary
//! failures, refused and hanging connections, and a connection lost after
//! the message was sent but before it was acknowledged. [`FakeSmtp::viewer`]
//! shows the received mail on a web page for the demo.

use std::{
    borrow::Cow,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use mail_parser::MessageParser;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinSet,
};

/// The largest message accepted, advertised as `SIZE`.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// RFC 5321 allows 1000 bytes a line, but senders that leave long HTML
/// lines unwrapped are common, and a test about content should not fail on
/// wrapping; the bound only has to protect memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// RFC 5321 asks servers to take at least 100.
const MAX_RECIPIENTS: usize = 1000;

const MAX_CONNECTIONS: usize = 256;

/// The oldest mail is forgotten past this, so a long demo run cannot grow
/// without bound.
const MAX_KEPT_MAILS: usize = 1000;

/// RFC 5321 section 4.5.3.2.7 gives servers five minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

const HOST: &str = "fake-smtp.paperstream.test";

/// How the fake behaves; change it while it runs with [`FakeSmtp::set`].
/// Sessions read it before every reply, so a change reaches pooled
/// connections too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmtpBehaviour {
    /// Wait this long before each reply.
    pub latency: Duration,
    /// `RCPT TO` these addresses gets `550 5.1.1`; compared ignoring case.
    pub reject_recipients: Vec<String>,
    /// `MAIL FROM` gets `451 4.3.0`, so nothing is accepted.
    pub temporary_failure: bool,
    /// Greet with `554` and close.
    pub refuse_connections: bool,
    /// Accept connections and never answer.
    pub hang: bool,
    /// Read the whole message, then close without the final `250`: the
    /// sender cannot know whether it was delivered. The message is kept
    /// with `acknowledged: false`.
    pub drop_after_data: bool,
}

/// One message as the sink received it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), empty for a bounce.
    pub from: String,
    /// The envelope recipients that were accepted.
    pub to: Vec<String>,
    /// Without the angle brackets.
    pub message_id: Option<String>,
    /// Decoded (RFC 2047).
    pub subject: Option<String>,
    /// Every header of the message in order, unfolded, values as sent
    /// (encoded words stay encoded).
    pub headers: Vec<(String, String)>,
    /// The first `text/plain` body part.
    pub text_body: Option<String>,
    /// The first `text/html` body part.
    pub html_body: Option<String>,
    /// The message after dot-unstuffing; invalid UTF-8 replaced.
    pub raw: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Whether the sender was told `250` for it.
    pub acknowledged: bool,
}

impl ReceivedMail {
    fn parse(from: String, to: Vec<String>, raw: &[u8], acknowledged: bool) -> Self {
        let parsed = MessageParser::default().parse(raw);
        let parsed = parsed.as_ref();
        Self {
            from,
            to,
            message_id: parsed.and_then(|m| m.message_id()).map(str::to_owned),
            subject: parsed.and_then(|m| m.subject()).map(str::to_owned),
            headers: parsed
                .map(|m| {
                    m.headers_raw()
                        .map(|(name, value)| (name.to_owned(), unfold(value)))
                        .collect()
                })
                .unwrap_or_default(),
            // mail-parser's `body_text` and `body_html` convert one kind
            // into the other when a kind is missing; the fake reports what
            // was sent, so it takes the parts of the exact type.
            text_body: parsed
                .and_then(|m| m.text_bodies().find(|p| p.is_text() && !p.is_text_html()))
                .and_then(|p| p.text_contents())
                .map(str::to_owned),
            html_body: parsed
                .and_then(|m| m.html_bodies().find(|p| p.is_text_html()))
                .and_then(|p| p.text_contents())
                .map(str::to_owned),
            raw: String::from_utf8_lossy(raw).into_owned(),
            received_at: OffsetDateTime::now_utc(),
            acknowledged,
        }
    }

    /// The first header of this name, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A folded header continues on lines that start with white space;
/// dropping the line breaks joins it again.
fn unfold(value: &str) -> String {
    value.replace(['\r', '\n'], "").trim().to_owned()
}

#[derive(Debug, Default)]
struct Sink {
    behaviour: Mutex<Arc<SmtpBehaviour>>,
    mails: Mutex<Vec<ReceivedMail>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    queued: AtomicUsize,
}

impl Sink {
    fn behaviour(&self) -> Arc<SmtpBehaviour> {
        lock(&self.behaviour).clone()
    }

    /// Keeps the message; returns its queue number for the `250` reply.
    fn record(&self, from: String, to: Vec<String>, raw: &[u8], acknowledged: bool) -> usize {
        let mail = ReceivedMail::parse(from, to, raw, acknowledged);
        tracing::info!(
            from = %mail.from,
            to = ?mail.to,
            subject = mail.subject.as_deref().unwrap_or(""),
            acknowledged,
            "fake SMTP received a message"
        );
        let mut mails = lock(&self.mails);
        if mails.len() >= MAX_KEPT_MAILS {
            mails.remove(0);
        }
        mails.push(mail);
        self.queued.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A running fake SMTP server. Stops when dropped, closing its
/// connections.
#[derive(Debug)]
pub struct FakeSmtp {
    addr: SocketAddr,
    sink: Arc<Sink>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        // The sessions live in a `JoinSet` inside this task, which aborts
        // them when it is dropped.
        self.server.abort();
    }
}

impl FakeSmtp {
    /// Listen on 127.0.0.1:`port`, any free port for 0.
    pub async fn start(behaviour: SmtpBehaviour, port: u16) -> std::io::Result<Self> {
        let sink = Arc::new(Sink {
            behaviour: Mutex::new(Arc::new(behaviour)),
            ..Sink::default()
        });
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(accept(listener, sink.clone()));
        Ok(Self { addr, sink, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, behaviour: SmtpBehaviour) {
        *lock(&self.sink.behaviour) = Arc::new(behaviour);
    }

    /// The messages received, oldest first (the newest 1000).
    pub fn mails(&self) -> Vec<ReceivedMail> {
        lock(&self.sink.mails).clone()
    }

    /// Connections accepted, refused ones included.
    pub fn connections(&self) -> usize {
        self.sink.connections.load(Ordering::SeqCst)
    }

    /// The messages once there are `count` of them, or whatever arrived
    /// before `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        while lock(&self.sink.mails).len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.mails()
    }

    /// A web page of the received mail for people (`GET /`, `GET
    /// /mails/{n}`) and its JSON for scripts (`GET /api/mails`); `n` is
    /// the index in [`FakeSmtp::mails`]. Serve it with `axum::serve`.
    pub fn viewer(&self) -> Router {
        Router::new()
            .route("/", get(index_page))
            .route("/mails/{n}", get(mail_page))
            .route("/api/mails", get(mails_json))
            .with_state(self.sink.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept(listener: TcpListener, sink: Arc<Sink>) {
    let mut sessions = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Usually out of file descriptors: back off rather than spin.
                tracing::warn!(%err, "fake SMTP could not accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while sessions.try_join_next().is_some() {}
        sink.connections.fetch_add(1, Ordering::SeqCst);
        sessions.spawn(session(stream, sink.clone()));
    }
}

/// Counts a connection as open until the session ends or is aborted.
struct Open(Arc<Sink>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn session(stream: TcpStream, sink: Arc<Sink>) {
    let open = sink.open.fetch_add(1, Ordering::SeqCst) + 1;
    let _open = Open(sink.clone());
    let (read, write) = stream.into_split();
    let mut session = Session {
        reader: BufReader::new(read),
        writer: BufWriter::new(write),
        sink,
        greeted: false,
        from: None,
        to: Vec::new(),
    };
    if let Err(err) = session.run(open).await {
        tracing::debug!(%err, "fake SMTP session failed");
    }
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    sink: Arc<Sink>,
    greeted: bool,
    /// `Some` once `MAIL FROM` was accepted: a transaction is open.
    from: Option<String>,
    to: Vec<String>,
}

/// What reading one line gave.
enum Read {
    Line,
    /// [`MAX_LINE_BYTES`] without a line end; the rest follows.
    TooLong,
    /// The peer closed, possibly in the middle of a line.
    Closed,
    Idle,
}

/// What a command asks of the session beyond its reply.
enum Step {
    Reply(Cow<'static, str>),
    Data,
    Quit,
}

/// How the message after `DATA` ended.
enum Data {
    Message(Vec<u8>),
    TooBig,
    LineTooLong,
    Closed,
    Idle,
}

impl Session {
    async fn run(&mut self, open: usize) -> std::io::Result<()> {
        if open > MAX_CONNECTIONS {
            // Straight to the socket: through `reply` these would hang too
            // while `hang` is set, and pile up without bound.
            self.writer
                .write_all(b"421 4.3.2 too many connections\r\n")
                .await?;
            return self.close().await;
        }
        if self.sink.behaviour().refuse_connections {
            self.reply("554 5.3.2 no SMTP service here").await?;
            return self.close().await;
        }
        self.reply(&format!("220 {HOST} ESMTP fake SMTP sink"))
            .await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            match self.read_line(&mut line).await? {
                Read::Line => {}
                Read::Closed => return Ok(()),
                Read::Idle => return self.idle().await,
                Read::TooLong => {
                    // Finding the next command would mean reading an
                    // unbounded line; a client this broken can reconnect.
                    self.reply("500 5.5.2 line too long").await?;
                    return self.close().await;
                }
            }
            let text = String::from_utf8_lossy(&line);
            match self.step(text.trim_end_matches(['\r', '\n'])) {
                Step::Reply(reply) => self.reply(&reply).await?,
                Step::Quit => {
                    self.reply("221 2.0.0 bye").await?;
                    return self.close().await;
                }
                Step::Data => {
                    if !self.data().await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Takes the message after `DATA` and ends the transaction; `false`
    /// when the session is over.
    async fn data(&mut self) -> std::io::Result<bool> {
        self.reply("354 end data with <CR><LF>.<CR><LF>").await?;
        let data = self.read_data().await?;
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        match data {
            Data::Message(message) => {
                if self.sink.behaviour().drop_after_data {
                    self.sink.record(from, to, &message, false);
                    self.close().await?;
                    return Ok(false);
                }
                let queued = self.sink.record(from, to, &message, true);
                self.reply(&format!("250 2.0.0 OK queued as {queued}"))
                    .await?;
            }
            Data::TooBig => {
                self.reply("552 5.3.4 message exceeds fixed maximum message size")
                    .await?;
            }
            Data::LineTooLong => self.reply("500 5.5.2 line too long").await?,
            Data::Closed => return Ok(false),
            Data::Idle => {
                self.idle().await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The protocol state machine: one command line in, what to do out.
    fn step(&mut self, line: &str) -> Step {
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        let args = args.trim();
        let reply = |text: &'static str| Step::Reply(Cow::Borrowed(text));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if args.is_empty() => reply("501 5.5.4 syntax: EHLO domain"),
            "EHLO" => {
                self.reset();
                self.greeted = true;
                Step::Reply(Cow::Owned(format!(
                    "250-{HOST}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250 SIZE {MAX_MESSAGE_BYTES}"
                )))
            }
            "HELO" => {
                self.reset();
                self.greeted = true;
                Step::Reply(Cow::Owned(format!("250 {HOST}")))
            }
            "MAIL" => Step::Reply(self.mail(args)),
            "RCPT" => Step::Reply(self.rcpt(args)),
            "DATA" if !args.is_empty() => reply("501 5.5.4 syntax: DATA"),
            "DATA" if self.from.is_none() => reply("503 5.5.1 MAIL first"),
            // RFC 2920's answer for a pipelining client whose recipients
            // all failed.
            "DATA" if self.to.is_empty() => reply("554 5.5.1 no valid recipients"),
            "DATA" => Step::Data,
            "RSET" => {
                self.reset();
                reply("250 2.0.0 OK")
            }
            "NOOP" => reply("250 2.0.0 OK"),
            // RFC 5321 requires VRFY; this is its answer for "not telling".
            "VRFY" => reply("252 2.5.2 cannot verify, but will accept the message"),
            "QUIT" => Step::Quit,
            _ => reply("502 5.5.1 command not implemented"),
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    fn mail(&mut self, args: &str) -> Cow<'static, str> {
        if !self.greeted {
            return "503 5.5.1 EHLO first".into();
        }
        if self.from.is_some() {
            return "503 5.5.1 nested MAIL command".into();
        }
        if self.sink.behaviour().temporary_failure {
            return "451 4.3.0 try again later".into();
        }
        let Some((address, params)) = parse_path(args, "FROM:") else {
            return "501 5.5.4 syntax: MAIL FROM:<address>".into();
        };
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > MAX_MESSAGE_BYTES as u64 => {
                        return "552 5.3.4 message exceeds fixed maximum message size".into();
                    }
                    Ok(_) => {}
                    Err(_) => return "501 5.5.4 bad SIZE".into(),
                },
                "BODY" | "SMTPUTF8" => {}
                _ => return "555 5.5.4 parameter not supported".into(),
            }
        }
        self.from = Some(address);
        "250 2.1.0 OK".into()
    }

    fn rcpt(&mut self, args: &str) -> Cow<'static, str> {
        if self.from.is_none() {
            return "503 5.5.1 MAIL first".into();
        }
        let Some((address, params)) = parse_path(args, "TO:") else {
            return "501 5.5.4 syntax: RCPT TO:<address>".into();
        };
        if address.is_empty() {
            return "501 5.1.3 empty recipient".into();
        }
        // Nothing advertised takes RCPT parameters (DSN would).
        if !params.is_empty() {
            return "555 5.5.4 parameter not supported".into();
        }
        let rejected = self
            .sink
            .behaviour()
            .reject_recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&address));
        if rejected {
            return "550 5.1.1 mailbox unavailable".into();
        }
        if self.to.len() >= MAX_RECIPIENTS {
            return "452 4.5.3 too many recipients".into();
        }
        self.to.push(address);
        "250 2.1.5 OK".into()
    }

    /// Reads the message up to the lone dot, undoing the dot-stuffing.
    /// Past a limit it keeps reading, so the session stays in step with
    /// the client, but keeps nothing more.
    async fn read_data(&mut self) -> std::io::Result<Data> {
        let mut message = Vec::new();
        let mut piece = Vec::new();
        let mut at_line_start = true;
        let (mut too_big, mut too_long) = (false, false);
        loop {
            piece.clear();
            match self.read_line(&mut piece).await? {
                Read::Line => {}
                Read::TooLong => too_long = true,
                Read::Closed => return Ok(Data::Closed),
                Read::Idle => return Ok(Data::Idle),
            }
            // Only CRLF.CRLF ends a message: also taking a bare LF around
            // the dot is what SMTP smuggling exploits.
            if at_line_start && piece == b".\r\n" {
                break;
            }
            let content = match piece.strip_prefix(b".") {
                Some(unstuffed) if at_line_start => unstuffed,
                _ => &piece[..],
            };
            too_big |= message.len() + content.len() > MAX_MESSAGE_BYTES;
            if !too_big && !too_long {
                message.extend_from_slice(content);
            }
            at_line_start = piece.ends_with(b"\r\n");
        }
        Ok(if too_long {
            Data::LineTooLong
        } else if too_big {
            Data::TooBig
        } else {
            Data::Message(message)
        })
    }

    /// Appends one line, with its line end, or [`MAX_LINE_BYTES`] of it.
    async fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Read> {
        // Replies wait in the buffer while more pipelined commands are
        // already here, so a pipelining client gets them in one packet
        // (RFC 2920); they must go out before this session could block.
        if !self.reader.buffer().contains(&b'\n') {
            self.writer.flush().await?;
        }
        let mut limited = (&mut self.reader).take(MAX_LINE_BYTES as u64);
        let read = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', buf)).await;
        Ok(match read {
            Err(_) => Read::Idle,
            Ok(Err(err)) => return Err(err),
            Ok(Ok(0)) => Read::Closed,
            Ok(Ok(_)) if buf.ends_with(b"\n") => Read::Line,
            Ok(Ok(n)) if n >= MAX_LINE_BYTES => Read::TooLong,
            Ok(Ok(_)) => Read::Closed,
        })
    }

    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let behaviour = self.sink.behaviour();
        if behaviour.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(behaviour.latency).await;
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await
    }

    async fn idle(&mut self) -> std::io::Result<()> {
        self.reply("421 4.4.2 idle for too long").await?;
        self.close().await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.writer.flush().await?;
        self.writer.shutdown().await
    }
}

/// `FROM:<address> PARAMS` into the address and the parameters. Takes a
/// space after the colon, which RFC 5321 forbids but clients send.
fn parse_path<'a>(args: &'a str, prefix: &str) -> Option<(String, &'a str)> {
    if !args.get(..prefix.len())?.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = args.get(prefix.len()..)?.trim_start().strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    // RFC 5321 tells receivers to ignore source routes (`@a,@b:user@c`).
    let mailbox = match path.split_once(':') {
        Some((route, mailbox)) if route.starts_with('@') => mailbox,
        _ => path,
    };
    Some((mailbox.to_owned(), params.trim()))
}

/// Mail content is untrusted: everything shown goes through here, which
/// also makes it safe inside a quoted attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// No scripts at all, and nothing fetched from elsewhere: a mail's HTML
/// must not run or phone home. The `srcdoc` frame inherits this policy.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}\
         pre{{white-space:pre-wrap;background:#f4f4f4;padding:1em}}\
         iframe{{width:100%;height:30em;border:1px solid #ccc}}</style></head>\
         <body>{body}</body></html>",
        escape(title)
    );
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

fn time_of(mail: &ReceivedMail) -> String {
    mail.received_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn index_page(State(sink): State<Arc<Sink>>) -> Response {
    let mails = lock(&sink.mails).clone();
    let mut body = format!(
        "<h1>Mail received by the fake SMTP server</h1>\
         <p>{} messages, newest first; <a href=\"/api/mails\">as JSON</a>.</p>\
         <table><tr><th>#</th><th>received</th><th>to</th><th>subject</th></tr>",
        mails.len()
    );
    for (n, mail) in mails.iter().enumerate().rev() {
        let subject = mail.subject.as_deref().unwrap_or("(no subject)");
        let flag = if mail.acknowledged {
            ""
        } else {
            " <em>(never acknowledged)</em>"
        };
        let _ = write!(
            body,
            "<tr><td>{n}</td><td>{}</td><td>{}</td>\
             <td><a href=\"/mails/{n}\">{}</a>{flag}</td></tr>",
            escape(&time_of(mail)),
            escape(&mail.to.join(", ")),
            escape(subject),
        );
    }
    body.push_str("</table>");
    page("fake SMTP", &body)
}

async fn mail_page(State(sink): State<Arc<Sink>>, Path(n): Path<usize>) -> Response {
    let Some(mail) = lock(&sink.mails).get(n).cloned() else {
        return (StatusCode::NOT_FOUND, "no such mail").into_response();
    };
    let subject = mail.subject.as_deref().unwrap_or("(no subject)");
    let mut body = format!(
        "<p><a href=\"/\">all mail</a></p><h1>{}</h1><table>",
        escape(subject)
    );
    let envelope = [
        ("envelope from", mail.from.clone()),
        ("envelope to", mail.to.join(", ")),
        ("received", time_of(&mail)),
        ("acknowledged", mail.acknowledged.to_string()),
    ];
    let envelope = envelope.iter().map(|(n, v)| (*n, v.as_str()));
    let headers = mail.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    for (name, value) in envelope.chain(headers) {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    body.push_str("</table>");
    if let Some(text) = &mail.text_body {
        let _ = write!(body, "<h2>Text</h2><pre>{}</pre>", escape(text));
    }
    if let Some(html) = &mail.html_body {
        // An empty `sandbox` gives the frame a unique origin and no
        // scripts, forms or popups.
        let _ = write!(
            body,
            "<h2>HTML</h2><iframe sandbox=\"\" srcdoc=\"{}\"></iframe>\
             <details><summary>HTML source</summary><pre>{}</pre></details>",
            escape(html),
            escape(html)
        );
    }
    let _ = write!(
        body,
        "<details><summary>Raw message</summary><pre>{}</pre></details>",
        escape(&mail.raw)
    );
    page(subject, &body)
}

async fn mails_json(State(sink): State<Arc<Sink>>) -> Json<Vec<ReceivedMail>> {
    Json(lock(&sink.mails).clone())
}
