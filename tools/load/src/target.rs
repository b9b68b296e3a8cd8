//! What a run loads — the gateway, the text encoder, or one diffusion stage directly — and one
//! call to it, measured. A call never fails the run: its status code is part of the outcome.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::Channel;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::text_encoder_client::TextEncoderClient;
use vidcascade_proto::v1::video_stage_client::VideoStageClient;
use vidcascade_proto::v1::{self, generate_event, stage_event};

use crate::payload::Payload;

/// Largest message a driver accepts (whole stage videos and checkpoints).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The service a run loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `gateway`: whole generations.
    Gateway,
    /// `encoder`: text encoder calls.
    Encoder,
    /// `stage:NAME`: one diffusion stage's `Generate`.
    Stage(String),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "gateway" => Ok(Self::Gateway),
            "encoder" => Ok(Self::Encoder),
            _ => match text.strip_prefix("stage:") {
                Some(name) if !name.is_empty() => Ok(Self::Stage(name.to_string())),
                _ => Err(format!(
                    "`{text}` is not a target; expected gateway, encoder or stage:NAME"
                )),
            },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway => f.write_str("gateway"),
            Self::Encoder => f.write_str("encoder"),
            Self::Stage(name) => write!(f, "stage:{name}"),
        }
    }
}

/// One measured call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// When it was sent, from the start of the run.
    pub sent_at: Duration,
    /// Time to its last event (or its error).
    pub latency: Duration,
    /// Time to its first progress event (denoising step), if any.
    pub first_progress: Option<Duration>,
    /// Time it waited in the stages' queues, as they report it.
    pub queued: Option<Duration>,
    /// Its status: OK, or the code it failed with.
    pub code: tonic::Code,
}

/// The requests of a run, cycled through.
#[derive(Debug, Clone)]
enum Requests {
    Generate(Vec<v1::GenerateRequest>),
    Encode(Vec<v1::EncodeRequest>),
    Stage(Vec<v1::StageRequest>),
}

/// Calls one target with its requests.
#[derive(Debug, Clone)]
pub struct Driver {
    target: Target,
    channel: Channel,
    requests: Requests,
    deadline: Option<Duration>,
}

impl Driver {
    /// A driver of `target` at `addr`. The gateway gets `prompts` (request i seeded `seed + i`);
    /// the encoder and stages replay `payload`.
    pub async fn connect(
        target: &Target,
        addr: &str,
        prompts: &[String],
        seed: u64,
        payload: Option<&Payload>,
        deadline: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let requests = match target {
            Target::Gateway => Requests::Generate(
                prompts
                    .iter()
                    .enumerate()
                    .map(|(i, prompt)| v1::GenerateRequest {
                        prompt: prompt.clone(),
                        seed: Some(seed + i as u64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            Target::Encoder => {
                let payload = payload.context("--target encoder replays a --payload")?;
                Requests::Encode(payload.encode.clone())
            }
            Target::Stage(name) => {
                let payload = payload.context("--target stage:NAME replays a --payload")?;
                Requests::Stage(payload.stage(name)?.to_vec())
            }
        };
        let empty = match &requests {
            Requests::Generate(r) => r.is_empty(),
            Requests::Encode(r) => r.is_empty(),
            Requests::Stage(r) => r.is_empty(),
        };
        if empty {
            bail!("no requests to send (give --prompt, or a payload with requests)");
        }
        let channel = Channel::from_shared(addr.to_string())?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Self {
            target: target.clone(),
            channel,
            requests,
            deadline,
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends request `i` (cycling through the requests) and measures it; `sent_at` is when,
    /// from the start of the run.
    pub async fn call(&self, i: usize, sent_at: Duration) -> Outcome {
        let started = Instant::now();
        let observed = match &self.requests {
            Requests::Generate(all) => self.generate(all[i % all.len()].clone(), started).await,
            Requests::Encode(all) => self.encode(all[i % all.len()].clone()).await,
            Requests::Stage(all) => {
                let mut request = all[i % all.len()].clone();
                request.request_id = format!("{}-{i}", request.request_id);
                self.stage(request, started).await
            }
        };
        Outcome {
            sent_at,
            latency: started.elapsed(),
            first_progress: observed.first_progress,
            queued: observed.queued,
            code: observed
                .result
                .err()
                .map_or(tonic::Code::Ok, |status| self.code_of(&status)),
        }
    }

    /// The outcome code of a failed call. tonic reports the client's own deadline as CANCELLED
    /// ("Timeout expired"); the load tester never cancels a call, so that is the deadline.
    fn code_of(&self, status: &tonic::Status) -> tonic::Code {
        let timed_out = status.code() == tonic::Code::Cancelled
            && self.deadline.is_some()
            && status.message() == "Timeout expired";
        if timed_out {
            tonic::Code::DeadlineExceeded
        } else {
            status.code()
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline);
        }
        request
    }

    async fn generate(&self, message: v1::GenerateRequest, started: Instant) -> Observed {
        let mut client =
            GatewayClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let call = client.generate(self.request(message));
        follow(call, started, |event: v1::GenerateEvent| {
            match event.event {
                Some(generate_event::Event::Progress(_)) => Mark::Progress,
                Some(generate_event::Event::Completed(done)) if !done.timings.is_empty() => {
                    let ms: u64 = done.timings.iter().map(|t| t.queue_ms).sum();
                    Mark::Queued(Duration::from_millis(ms))
                }
                _ => Mark::Other,
            }
        })
        .await
    }

    async fn encode(&self, message: v1::EncodeRequest) -> Observed {
        let result = TextEncoderClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .encode(self.request(message))
            .await
            .map(|_| ());
        Observed {
            result,
            first_progress: None,
            queued: None,
        }
    }

    async fn stage(&self, message: v1::StageRequest, started: Instant) -> Observed {
        let mut client = VideoStageClient::new(self.channel.clone())
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let call = client.generate(self.request(message));
        follow(call, started, |event: v1::StageEvent| match event.event {
            Some(stage_event::Event::Progress(_)) => Mark::Progress,
            Some(stage_event::Event::Done(done)) => {
                Mark::Queued(Duration::from_millis(done.queue_ms))
            }
            _ => Mark::Other,
        })
        .await
    }
}

/// What one streamed event says about its call's timing.
enum Mark {
    /// A denoising step finished.
    Progress,
    /// The service reports the call's time in queue.
    Queued(Duration),
    /// Nothing the report uses.
    Other,
}

/// What a call observed: its result, its first progress event and its reported queue time.
struct Observed {
    result: Result<(), tonic::Status>,
    first_progress: Option<Duration>,
    queued: Option<Duration>,
}

/// Follows the server stream `call` opens to its end, noting (through `mark`) when the first
/// progress event came, from `started`, and the queue time the service reported.
async fn follow<M>(
    call: impl Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
    started: Instant,
    mark: impl Fn(M) -> Mark,
) -> Observed {
    let mut first_progress = None;
    let mut queued = None;
    let result = async {
        let mut stream = call.await?.into_inner();
        while let Some(event) = stream.message().await? {
            match mark(event) {
                Mark::Progress => {
                    first_progress.get_or_insert(started.elapsed());
                }
                Mark::Queued(time) => queued = Some(time),
                Mark::Other => {}
            }
        }
        Ok(())
    }
    .await;
    Observed {
        result,
        first_progress,
        queued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for text in ["gateway", "encoder", "stage:ssr"] {
            let target: Target = text.parse().expect(text);
            assert_eq!(target.to_string(), text);
        }
        for bad in ["stage:", "stages", ""] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
