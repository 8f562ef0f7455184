//! Run the fakes as standalone servers, for the demo on machines that
//! cannot reach arXiv, have no Ollama or OpenAI key, or should not send
//! real mail and webhooks.

use std::time::Duration;

use clap::{Parser, Subcommand};
use fakes::{arxiv, llm, smtp, webhook};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    fake: Fake,
}

#[derive(Debug, Subcommand)]
enum Fake {
    /// The query API (/api/query), OAI-PMH (/oai) and feeds (/atom/...).
    Arxiv {
        #[arg(long, default_value_t = 7080)]
        port: u16,
        /// Papers in the generated corpus, 40 a day up to today.
        #[arg(long, default_value_t = 400)]
        papers: usize,
        #[arg(long, default_value_t = 100)]
        page_size: usize,
    },
    /// Ollama (/api/chat) and OpenAI (/v1/chat/completions).
    Llm {
        #[arg(long, default_value_t = 11434)]
        port: u16,
        /// Share of calls answered 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
    },
    /// An SMTP sink, with a web page of the mail it received.
    Smtp {
        #[arg(long, default_value_t = 2525)]
        port: u16,
        /// The web page (/) and JSON (/api/mails) of the received mail.
        #[arg(long, default_value_t = 8025)]
        http_port: u16,
    },
    /// Generic webhooks (/hooks/{name}) and Slack incoming webhooks
    /// (/slack/{name}).
    Webhooks {
        #[arg(long, default_value_t = 7090)]
        port: u16,
        /// Share of calls answered 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().fake {
        Fake::Arxiv {
            port,
            papers,
            page_size,
        } => {
            let today = time::OffsetDateTime::now_utc().date();
            let days = (papers / 40).max(1) as i64;
            let first = today.saturating_sub(time::Duration::days(days));
            let server =
                arxiv::FakeArxiv::start(arxiv::corpus(papers, first, 40), page_size, None, port)
                    .await?;
            eprintln!("fake arXiv at {} ({papers} papers)", server.base_url());
            tokio::signal::ctrl_c().await?;
        }
        Fake::Llm {
            port,
            error_rate,
            latency_ms,
        } => {
            let behaviour = llm::Behaviour {
                error_rate,
                latency: Duration::from_millis(latency_ms),
                max_parallel: 2,
                max_queue: 64,
                ..llm::Behaviour::default()
            };
            let server = llm::FakeLlm::start(behaviour, port).await?;
            eprintln!(
                "fake Ollama at {}, fake OpenAI at {}",
                server.ollama_url(),
                server.openai_url()
            );
            tokio::signal::ctrl_c().await?;
        }
        Fake::Smtp { port, http_port } => {
            let server = smtp::FakeSmtp::start(smtp::SmtpBehaviour::default(), port).await?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await?;
            let http = listener.local_addr()?;
            eprintln!("fake SMTP at {}, its mail at http://{http}", server.addr());
            tokio::select! {
                served = axum::serve(listener, server.viewer()) => served?,
                stop = tokio::signal::ctrl_c() => stop?,
            }
        }
        Fake::Webhooks {
            port,
            error_rate,
            latency_ms,
        } => {
            let behaviour = webhook::WebhookBehaviour {
                error_rate,
                latency: Duration::from_millis(latency_ms),
                ..webhook::WebhookBehaviour::default()
            };
            let server = webhook::FakeWebhooks::start(behaviour, port).await?;
            eprintln!(
                "fake webhooks at {}, Slack at {}, the calls at http://{}/api/hooks",
                server.url("{name}"),
                server.slack_url("{name}"),
                server.addr()
            );
            tokio::signal::ctrl_c().await?;
        }
    }
    Ok(())
}
