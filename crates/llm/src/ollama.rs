//! A local Ollama (`POST /api/chat`, no streaming).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{LlmError, SYSTEM_PROMPT, Summarizer, Summary, SummaryRequest};

#[derive(Debug, Clone)]
pub struct Ollama {
    http: reqwest::Client,
    base_url: String,
    model: String,
}

impl Ollama {
    /// `base_url` like `http://127.0.0.1:11434`; the default model is `gemma3`.
    pub fn new(base_url: &str, model: &str, timeout: Duration) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| LlmError::Http {
                provider: "ollama",
                source,
            })?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
        })
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    stream: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    message: AnswerMessage,
    #[serde(default)]
    prompt_eval_count: u32,
    #[serde(default)]
    eval_count: u32,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: String,
}

impl Summarizer for Ollama {
    fn name(&self) -> &'static str {
        "ollama"
    }

    async fn summarize(&self, request: &SummaryRequest) -> Result<Summary, LlmError> {
        let user = request.user_prompt();
        let body = ChatRequest {
            model: &self.model,
            messages: [
                Message {
                    role: "system",
                    content: SYSTEM_PROMPT,
                },
                Message {
                    role: "user",
                    content: &user,
                },
            ],
            stream: false,
        };
        let http_error = |source| LlmError::Http {
            provider: "ollama",
            source,
        };
        let response = self
            .http
            .post(format!("{}/api/chat", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(LlmError::Status {
                provider: "ollama",
                status: status.as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        let answer: ChatResponse = response.json().await.map_err(|e| LlmError::BadAnswer {
            provider: "ollama",
            detail: e.to_string(),
        })?;
        let text = answer.message.content.trim().to_owned();
        if text.is_empty() {
            return Err(LlmError::BadAnswer {
                provider: "ollama",
                detail: "empty summary".into(),
            });
        }
        Ok(Summary {
            text,
            provider: "ollama".into(),
            model: self.model.clone(),
            input_tokens: answer.prompt_eval_count,
            output_tokens: answer.eval_count,
            cost_micro_usd: 0,
            extractive: false,
        })
    }
}
