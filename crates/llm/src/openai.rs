//! OpenAI Chat Completions (`POST /v1/chat/completions`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{LlmError, SYSTEM_PROMPT, Summarizer, Summary, SummaryRequest};

#[derive(Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    model: String,
    max_output_tokens: u32,
    /// Prices in micro-USD per 1,000 tokens.
    input_price: u64,
    output_price: u64,
}

impl std::fmt::Debug for OpenAi {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `https://api.openai.com/v1` or a compatible endpoint.
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub max_output_tokens: u32,
    pub input_price_per_1k_micro_usd: u64,
    pub output_price_per_1k_micro_usd: u64,
    pub timeout: Duration,
}

impl OpenAi {
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|source| LlmError::Http {
                provider: "openai",
                source,
            })?;
        Ok(Self {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key: config.api_key,
            model: config.model,
            max_output_tokens: config.max_output_tokens,
            input_price: config.input_price_per_1k_micro_usd,
            output_price: config.output_price_per_1k_micro_usd,
        })
    }

    /// An upper bound on the tokens a call for `request` can use: every
    /// input byte counted as a token, plus the output cap.
    pub fn worst_case_tokens(&self, request: &SummaryRequest) -> u64 {
        (SYSTEM_PROMPT.len() + request.user_prompt().len()) as u64
            + u64::from(self.max_output_tokens)
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    max_tokens: u32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: String,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl Summarizer for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
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
            max_tokens: self.max_output_tokens,
        };
        let response = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .map_err(|source| LlmError::Http {
                provider: "openai",
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(LlmError::Status {
                provider: "openai",
                status: status.as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        let answer: ChatResponse = response.json().await.map_err(|e| LlmError::BadAnswer {
            provider: "openai",
            detail: e.to_string(),
        })?;
        let text = answer
            .choices
            .into_iter()
            .next()
            .map(|c| c.message.content.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or(LlmError::BadAnswer {
                provider: "openai",
                detail: "no summary in the answer".into(),
            })?;
        let (input, output) = (answer.usage.prompt_tokens, answer.usage.completion_tokens);
        Ok(Summary {
            text,
            provider: "openai".into(),
            model: self.model.clone(),
            input_tokens: input,
            output_tokens: output,
            cost_micro_usd: (u64::from(input) * self.input_price
                + u64::from(output) * self.output_price)
                / 1000,
            extractive: false,
        })
    }
}
