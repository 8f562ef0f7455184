//! The SMTP sink against lettre's tokio transport, the client the notifier
//! uses, and against a raw socket for what lettre never does: pipelining,
//! commands out of sequence, bare line feeds around the final dot.

use std::time::Duration;

use fakes::smtp::{FakeSmtp, MAX_MESSAGE_BYTES, ReceivedMail, SmtpBehaviour};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        MultiPart,
        header::{HeaderName, HeaderValue},
    },
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

const WAIT: Duration = Duration::from_secs(5);

async fn sink(behaviour: SmtpBehaviour) -> FakeSmtp {
    FakeSmtp::start(behaviour, 0)
        .await
        .expect("fake SMTP starts")
}

fn transport(smtp: &FakeSmtp) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtp.port())
        .timeout(Some(Duration::from_secs(2)))
        .build()
}

fn digest(to: &str, subject: &str, text: &str, html: &str) -> Message {
    Message::builder()
        .from(
            "paperstream <digest@paperstream.test>"
                .parse()
                .expect("from"),
        )
        .to(to.parse().expect("to"))
        .subject(subject)
        .message_id(Some("<digest-1@paperstream.test>".into()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            "<https://paperstream.test/u/tok3n>, <mailto:unsub@paperstream.test?subject=tok3n>"
                .into(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
            "List-Unsubscribe=One-Click".into(),
        ))
        .multipart(MultiPart::alternative_plain_html(
            text.to_owned(),
            html.to_owned(),
        ))
        .expect("message")
}

fn plain(to: &str, text: &str) -> Message {
    Message::builder()
        .from("digest@paperstream.test".parse().expect("from"))
        .to(to.parse().expect("to"))
        .subject("plain")
        .body(text.to_owned())
        .expect("message")
}

fn only(mails: Vec<ReceivedMail>) -> ReceivedMail {
    assert_eq!(mails.len(), 1, "{mails:#?}");
    mails.into_iter().next().expect("one mail")
}

#[tokio::test]
async fn delivers_a_message_with_its_headers_and_both_bodies() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let message = digest(
        "Ada <ada@example.org>",
        "3 neue Papiere über Streams",
        "Hello Ada,\nthree papers today.",
        "<p>Hello <b>Ada</b>, three papers today.</p>",
    );
    let response = transport(&smtp).send(message).await.expect("sent");
    assert_eq!(u16::from(response.code()), 250);

    let mail = only(smtp.wait_for(1, WAIT).await);
    assert!(mail.acknowledged);
    assert_eq!(mail.from, "digest@paperstream.test");
    assert_eq!(mail.to, ["ada@example.org"]);
    assert_eq!(mail.subject.as_deref(), Some("3 neue Papiere über Streams"));
    assert_eq!(
        mail.message_id.as_deref(),
        Some("digest-1@paperstream.test")
    );
    assert_eq!(
        mail.header("list-unsubscribe"),
        Some("<https://paperstream.test/u/tok3n>, <mailto:unsub@paperstream.test?subject=tok3n>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    let text = mail.text_body.as_deref().expect("text part");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["Hello Ada,", "three papers today."]
    );
    assert_eq!(
        mail.html_body.as_deref().map(str::trim),
        Some("<p>Hello <b>Ada</b>, three papers today.</p>")
    );
    assert!(
        mail.raw
            .contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    );
    assert_eq!(smtp.connections(), 1);
}

#[tokio::test]
async fn a_rejected_recipient_is_a_permanent_error() {
    let smtp = sink(SmtpBehaviour {
        reject_recipients: vec!["Gone@Example.org".into()],
        ..SmtpBehaviour::default()
    })
    .await;
    let transport = transport(&smtp);

    let err = transport
        .send(plain("gone@example.ORG", "hi"))
        .await
        .expect_err("recipient rejected");
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(err.status().map(u16::from), Some(550));

    // Other recipients still get their mail, on the same pooled connection.
    transport
        .send(plain("here@example.org", "hi"))
        .await
        .expect("sent");
    assert_eq!(only(smtp.wait_for(1, WAIT).await).to, ["here@example.org"]);
}

#[tokio::test]
async fn a_temporary_failure_is_transient_and_accepts_nothing() {
    let smtp = sink(SmtpBehaviour {
        temporary_failure: true,
        ..SmtpBehaviour::default()
    })
    .await;
    let transport = transport(&smtp);

    let err = transport
        .send(plain("ada@example.org", "hi"))
        .await
        .expect_err("try again later");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.status().map(u16::from), Some(451));
    assert!(smtp.mails().is_empty());

    // Once the relay recovers, the retry goes through.
    smtp.set(SmtpBehaviour::default());
    transport
        .send(plain("ada@example.org", "hi"))
        .await
        .expect("sent");
    assert_eq!(smtp.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_permanent_error() {
    let smtp = sink(SmtpBehaviour {
        refuse_connections: true,
        ..SmtpBehaviour::default()
    })
    .await;
    let err = transport(&smtp)
        .send(plain("ada@example.org", "hi"))
        .await
        .expect_err("refused");
    assert!(err.is_permanent(), "{err:?}");
    assert_eq!(smtp.connections(), 1);
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn a_hanging_server_needs_a_timeout_around_send() {
    let smtp = sink(SmtpBehaviour {
        hang: true,
        ..SmtpBehaviour::default()
    })
    .await;
    // lettre 0.11's async transport applies its own timeout to connecting
    // only; reading the greeting waits for ever. Either way the sender
    // must give up on its own.
    let sent = tokio::time::timeout(
        Duration::from_millis(700),
        transport(&smtp).send(plain("ada@example.org", "hi")),
    )
    .await;
    match sent {
        Err(_elapsed) => {}
        Ok(Err(err)) if err.is_timeout() => {}
        Ok(other) => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(smtp.connections(), 1);
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn latency_slows_every_reply() {
    let smtp = sink(SmtpBehaviour {
        latency: Duration::from_millis(40),
        ..SmtpBehaviour::default()
    })
    .await;
    let started = std::time::Instant::now();
    transport(&smtp)
        .send(plain("ada@example.org", "hi"))
        .await
        .expect("sent");
    // Greeting, EHLO, MAIL, RCPT, DATA and the final reply.
    assert!(started.elapsed() >= Duration::from_millis(6 * 40));
}

#[tokio::test]
async fn a_connection_dropped_after_data_leaves_the_message_unacknowledged() {
    let smtp = sink(SmtpBehaviour {
        drop_after_data: true,
        ..SmtpBehaviour::default()
    })
    .await;
    let err = transport(&smtp)
        .send(plain("ada@example.org", "did it arrive?"))
        .await
        .expect_err("no final reply");
    // Neither refused nor deferred, and no status: the sender cannot tell
    // delivered from lost, so it must not count the mail as bounced.
    assert_eq!(err.status(), None, "{err:?}");
    assert!(!err.is_permanent() && !err.is_transient(), "{err:?}");

    let mail = only(smtp.wait_for(1, WAIT).await);
    assert!(!mail.acknowledged);
    assert_eq!(
        mail.text_body.as_deref().map(str::trim_end),
        Some("did it arrive?")
    );
}

#[tokio::test]
async fn dots_at_line_starts_survive_the_round_trip() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let text = ".\n.leading dot\n..two dots\nend.\n. \nlast";
    transport(&smtp)
        .send(plain("ada@example.org", text))
        .await
        .expect("sent");
    let mail = only(smtp.wait_for(1, WAIT).await);
    assert_eq!(
        mail.text_body
            .as_deref()
            .expect("text")
            .lines()
            .collect::<Vec<_>>(),
        text.lines().collect::<Vec<_>>()
    );
    // A plain message has no HTML part, and the fake does not invent one.
    assert_eq!(mail.html_body, None);
}

/// A line-at-a-time SMTP client that writes exactly what it is given.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(smtp: &FakeSmtp) -> Self {
        let stream = TcpStream::connect(smtp.addr()).await.expect("connect");
        let (read, writer) = stream.into_split();
        let mut raw = Self {
            reader: BufReader::new(read),
            writer,
        };
        assert_eq!(raw.reply().await.0, 220);
        raw
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.expect("write");
    }

    /// One reply, with all the lines of a multi-line one.
    async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("a reply in time")
                .expect("read");
            assert!(read > 0, "closed; got {lines:?}");
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines[0]
            .get(..3)
            .and_then(|c| c.parse().ok())
            .expect("code");
        (code, lines)
    }

    async fn codes(&mut self, count: usize) -> Vec<u16> {
        let mut codes = Vec::new();
        for _ in 0..count {
            codes.push(self.reply().await.0);
        }
        codes
    }
}

#[tokio::test]
async fn ehlo_advertises_the_extensions_and_no_auth_or_tls() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let mut raw = Raw::connect(&smtp).await;
    raw.send("EHLO client.test\r\n").await;
    let (code, lines) = raw.reply().await;
    assert_eq!(code, 250);
    let keywords: Vec<&str> = lines.iter().skip(1).map(|l| &l[4..]).collect();
    for wanted in ["PIPELINING", "8BITMIME", "SMTPUTF8"] {
        assert!(keywords.contains(&wanted), "{keywords:?}");
    }
    assert!(keywords.contains(&format!("SIZE {MAX_MESSAGE_BYTES}").as_str()));
    assert!(
        !keywords
            .iter()
            .any(|k| k.starts_with("AUTH") || k.starts_with("STARTTLS")),
        "{keywords:?}"
    );
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let smtp = sink(SmtpBehaviour {
        reject_recipients: vec!["nobody@example.org".into()],
        ..SmtpBehaviour::default()
    })
    .await;
    let mut raw = Raw::connect(&smtp).await;
    raw.send(
        "EHLO client.test\r\nMAIL FROM:<digest@paperstream.test> BODY=8BITMIME\r\n\
         RCPT TO:<ada@example.org>\r\nRCPT TO:<nobody@example.org>\r\n\
         RCPT TO: <grace@example.org>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(raw.codes(6).await, [250, 250, 250, 550, 250, 354]);
    raw.send("Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        .await;
    assert_eq!(raw.codes(5).await, [250, 250, 250, 250, 221]);

    let mail = only(smtp.wait_for(1, WAIT).await);
    assert_eq!(mail.to, ["ada@example.org", "grace@example.org"]);
    assert_eq!(mail.subject.as_deref(), Some("piped"));
}

#[tokio::test]
async fn commands_out_of_sequence_get_503_and_unknown_ones_502() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let mut raw = Raw::connect(&smtp).await;
    for (command, code) in [
        ("MAIL FROM:<a@example.org>", 503),
        ("EHLO", 501),
        ("HELO client.test", 250),
        ("RCPT TO:<b@example.org>", 503),
        ("DATA", 503),
        ("MAIL FROM:a@example.org", 501),
        ("MAIL FROM:<a@example.org> SIZE=99999999999", 552),
        ("MAIL FROM:<a@example.org> FOO=1", 555),
        ("MAIL FROM:<a@example.org>", 250),
        ("MAIL FROM:<a@example.org>", 503),
        ("DATA", 554),
        ("RCPT TO:<>", 501),
        ("STARTTLS", 502),
        ("AUTH PLAIN AGFkYQBzZWNyZXQ=", 502),
        ("XYZZY", 502),
        ("rset", 250),
        ("RCPT TO:<b@example.org>", 503),
        ("NOOP", 250),
    ] {
        raw.send(&format!("{command}\r\n")).await;
        let (got, lines) = raw.reply().await;
        assert_eq!(got, code, "{command}: {lines:?}");
    }
}

/// Opens a transaction for one recipient and has `DATA` accepted.
async fn start_data(smtp: &FakeSmtp) -> Raw {
    let mut raw = Raw::connect(smtp).await;
    raw.send(
        "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(raw.codes(4).await, [250, 250, 250, 354]);
    raw
}

#[tokio::test]
async fn only_crlf_dot_crlf_ends_the_message() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let mut raw = start_data(&smtp).await;
    // A bare LF before or after the dot is how SMTP smuggling hides a
    // second message; both must stay part of this one.
    raw.send(
        "Subject: one\r\n\r\nfirst\n.\r\nMAIL FROM:<evil@example.org>\r\n\
         second\r\n.\nthird\r\n..stuffed\r\n.\r\n",
    )
    .await;
    assert_eq!(raw.reply().await.0, 250);
    let mail = only(smtp.wait_for(1, WAIT).await);
    let body = mail.text_body.expect("body");
    assert!(body.contains("MAIL FROM:<evil@example.org>"), "{body:?}");
    assert!(body.contains("third"), "{body:?}");
    assert!(body.contains("\n.stuffed"), "{body:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_552() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let mut raw = start_data(&smtp).await;
    let line = format!("{}\r\n", "x".repeat(998));
    let chunk = line.repeat(1024);
    for _ in 0..(MAX_MESSAGE_BYTES / chunk.len() + 1) {
        raw.send(&chunk).await;
    }
    raw.send(".\r\nNOOP\r\n").await;
    // The session stays usable after the refusal.
    assert_eq!(raw.codes(2).await, [552, 250]);
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn long_lines_are_taken_up_to_64_kib() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let mut raw = start_data(&smtp).await;
    let long = "y".repeat(60 * 1024);
    raw.send(&format!("Subject: long\r\n\r\n{long}\r\n.\r\n"))
        .await;
    assert_eq!(raw.reply().await.0, 250);

    raw.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    assert_eq!(raw.codes(3).await, [250, 250, 354]);
    let too_long = "z".repeat(100 * 1024);
    raw.send(&format!("Subject: too long\r\n\r\n{too_long}\r\n.\r\n"))
        .await;
    assert_eq!(raw.reply().await.0, 500);

    let mail = only(smtp.wait_for(1, WAIT).await);
    assert_eq!(
        mail.text_body.as_deref().map(str::trim_end),
        Some(long.as_str())
    );
}

#[tokio::test]
async fn dropping_the_fake_closes_its_port_and_connections() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let addr = smtp.addr();
    let mut raw = Raw::connect(&smtp).await;
    drop(smtp);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.reader.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_viewer_escapes_everything_it_shows() {
    let smtp = sink(SmtpBehaviour::default()).await;
    let message = digest(
        "ada@example.org",
        "<script>alert('subject')</script>",
        "text with </pre><script>alert('text')</script>",
        "<img src=x onerror=\"alert('html')\"><p>hello</p>",
    );
    transport(&smtp).send(message).await.expect("sent");
    smtp.wait_for(1, WAIT).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let viewer = smtp.viewer();
    let server = tokio::spawn(async move { axum::serve(listener, viewer).await });
    let http = reqwest::Client::new();

    let index = http.get(format!("{base}/")).send().await.expect("index");
    assert!(
        index
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("default-src 'none'"))
    );
    let index = index.text().await.expect("index body");
    assert!(index.contains("&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;"));
    assert!(index.contains("href=\"/mails/0\""));

    let page = http
        .get(format!("{base}/mails/0"))
        .send()
        .await
        .expect("mail")
        .text()
        .await
        .expect("mail body");
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("&lt;/pre&gt;&lt;script&gt;"));
    assert!(page.contains("<iframe sandbox=\"\" srcdoc=\"&lt;img src=x onerror=&quot;"));
    assert!(page.contains("https://paperstream.test/u/tok3n"));

    let missing = http
        .get(format!("{base}/mails/7"))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), 404);

    let json: serde_json::Value = http
        .get(format!("{base}/api/mails"))
        .send()
        .await
        .expect("json")
        .json()
        .await
        .expect("json body");
    assert_eq!(json[0]["subject"], "<script>alert('subject')</script>");
    assert_eq!(json[0]["to"][0], "ada@example.org");
    assert_eq!(json[0]["acknowledged"], true);
    server.abort();
}
