//! Loading a repository: the happy path, a Hugging Face-layout T5 checkpoint, and every error.
//!
//! Integration tests: they build the tiny cascade with `vidcascade-test-support`, which a unit
//! test could not use (it would link a second copy of this crate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use vidcascade_models::ModelRepository;
use vidcascade_models::repository::scaffold::{self, WeightInit};
use vidcascade_models::text_encoder::T5Config;
use vidcascade_test_support::tiny_scaffold;

/// An edit of a JSON document, for table-driven error tests.
type JsonEdit = Box<dyn Fn(&mut Value)>;

fn tiny_repository() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("tiny");
    tiny_scaffold().write(&root, WeightInit::Random { seed: 3 })?;
    Ok((dir, root))
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) -> anyhow::Result<()> {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    edit(&mut value);
    std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    Ok(())
}

fn edit_weights(
    path: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> anyhow::Result<()> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

fn open_err(root: &Path) -> String {
    ModelRepository::open(root)
        .expect_err("must fail")
        .to_string()
}

#[test]
fn a_written_repository_opens_and_every_stage_loads() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    let repo = ModelRepository::open(&root)?;
    let names: Vec<&str> = repo
        .manifest()
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["text-encoder", "base", "tsr", "ssr"]);
    let encoder = repo.load_text_encoder(&Device::Cpu)?;
    let embeddings = encoder.encode(&["a red circle moving left", ""])?;
    assert_eq!(embeddings[0].dims(), &[6, 16]);
    assert_eq!(embeddings[1].dims(), &[1, 16]);
    for name in ["base", "tsr", "ssr"] {
        repo.load_unet(name, &Device::Cpu)?;
    }
    Ok(())
}

#[test]
fn batched_encoding_equals_one_prompt_at_a_time() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    let encoder = ModelRepository::open(&root)?.load_text_encoder(&Device::Cpu)?;
    let together = encoder.encode(&["a blue square moving up on a black background", "red"])?;
    let alone = encoder.encode(&["red"])?;
    let diff = (&together[1] - &alone[0])?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-5, "padding changed an embedding by {diff}");
    Ok(())
}

#[test]
fn prompts_over_the_token_limit_are_rejected_with_the_limit() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    let encoder = ModelRepository::open(&root)?.load_text_encoder(&Device::Cpu)?;
    let long = vec!["red"; 40].join(" ");
    let err = encoder
        .encode(&["ok", &long])
        .expect_err("too long")
        .to_string();
    assert!(
        err.contains("prompt 1 is 41 tokens long; the limit is 16 tokens"),
        "{err}"
    );
    Ok(())
}

/// Every tensor name of Hugging Face's `T5EncoderModel` / `T5ForConditionalGeneration` state dict
/// for a gated (v1.1) config, written out by hand from the transformers source — independent of
/// our module tree — plus decoder tensors a full checkpoint carries.
fn hugging_face_t5_tensors(
    cfg: &T5Config,
    with_shared: bool,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let inner = cfg.num_heads * cfg.d_kv;
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize]| -> anyhow::Result<()> {
        t.insert(
            name,
            Tensor::randn(0f32, 0.1, shape, &dev)?.to_dtype(DType::F16)?,
        );
        Ok(())
    };
    if with_shared {
        put("shared.weight".into(), &[cfg.vocab_size, cfg.d_model])?;
    }
    put(
        "encoder.embed_tokens.weight".into(),
        &[cfg.vocab_size, cfg.d_model],
    )?;
    for i in 0..cfg.num_layers {
        let p = format!("encoder.block.{i}");
        for w in ["q", "k", "v"] {
            put(
                format!("{p}.layer.0.SelfAttention.{w}.weight"),
                &[inner, cfg.d_model],
            )?;
        }
        put(
            format!("{p}.layer.0.SelfAttention.o.weight"),
            &[cfg.d_model, inner],
        )?;
        if i == 0 {
            put(
                format!("{p}.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?;
        }
        put(format!("{p}.layer.0.layer_norm.weight"), &[cfg.d_model])?;
        put(
            format!("{p}.layer.1.DenseReluDense.wi_0.weight"),
            &[cfg.d_ff, cfg.d_model],
        )?;
        put(
            format!("{p}.layer.1.DenseReluDense.wi_1.weight"),
            &[cfg.d_ff, cfg.d_model],
        )?;
        put(
            format!("{p}.layer.1.DenseReluDense.wo.weight"),
            &[cfg.d_model, cfg.d_ff],
        )?;
        put(format!("{p}.layer.1.layer_norm.weight"), &[cfg.d_model])?;
    }
    put("encoder.final_layer_norm.weight".into(), &[cfg.d_model])?;
    put("decoder.final_layer_norm.weight".into(), &[cfg.d_model])?;
    put("lm_head.weight".into(), &[cfg.vocab_size, cfg.d_model])?;
    Ok(t)
}

#[test]
fn a_hugging_face_t5_checkpoint_loads_unchanged() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    let encoder_dir = root.join("text-encoder");
    // An HF config.json, with fields we do not use.
    let hf_config = json!({
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": 32, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 2,
        "num_decoder_layers": 2, "num_heads": 2, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": true,
        "tie_word_embeddings": false, "max_tokens": 16
    });
    std::fs::write(encoder_dir.join("config.json"), hf_config.to_string())?;
    let cfg: T5Config = serde_json::from_value(hf_config)?;
    for with_shared in [true, false] {
        let tensors = hugging_face_t5_tensors(&cfg, with_shared)?;
        candle_core::safetensors::save(&tensors, encoder_dir.join("model.safetensors"))?;
        let encoder = ModelRepository::open(&root)?.load_text_encoder(&Device::Cpu)?;
        let out = encoder.encode(&["a green triangle"])?;
        assert_eq!(out[0].dims(), &[4, 16]);
        assert!(scaffold::all_finite(&out[0])?);
    }
    Ok(())
}

#[test]
fn a_missing_repository_names_the_manifest_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let err = open_err(&dir.path().join("nowhere"));
    assert!(err.contains("nowhere/manifest.json"), "{err}");
    Ok(())
}

#[test]
fn malformed_manifest_json_names_file_and_position() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    std::fs::write(
        root.join("manifest.json"),
        "{\"name\": \"x\", \"stages\": [}",
    )?;
    let err = open_err(&root);
    assert!(
        err.contains("manifest.json is not a valid model manifest") && err.contains("line 1"),
        "{err}"
    );
    Ok(())
}

#[test]
fn manifest_chain_errors_name_the_stage_and_rule() -> anyhow::Result<()> {
    let cases: Vec<(JsonEdit, &str)> = vec![
        (
            Box::new(|m| m["stages"][1]["kind"] = json!("tsr")),
            "stage 1 (`base`): `kind` must be base here",
        ),
        (
            Box::new(|m| m["stages"][2]["name"] = json!("base")),
            "stage 2 (`base`): `name` is used by another stage",
        ),
        (
            Box::new(|m| m["stages"][2]["name"] = json!("Temporal SR")),
            "`name` must match [a-z0-9-]+",
        ),
        (
            Box::new(|m| m["stages"][2]["input"]["frames"] = json!(5)),
            "stage 2 (`tsr`): `input` 5x8x8 @ 2 fps must equal the previous stage's output 4x8x8 @ 2 fps",
        ),
        (
            Box::new(|m| m["stages"][2]["output"]["frames"] = json!(6)),
            "a TSR stage must multiply frames by an integer >= 2, got 4 -> 6",
        ),
        (
            Box::new(|m| m["stages"][2]["output"]["fps"] = json!(3.0)),
            "a TSR stage with 2x frames must have 2x fps",
        ),
        (
            Box::new(|m| {
                m["stages"][3]["output"]["width"] = json!(24);
            }),
            "an SSR stage must scale height and width by the same integer >= 2",
        ),
        (
            Box::new(|m| m["stages"][1]["defaults"]["steps"] = json!(0)),
            "`defaults.steps` must be in 1..=1000, got 0",
        ),
        (
            Box::new(|m| m["stages"][3]["defaults"]["noise_augmentation"] = json!(1.5)),
            "`defaults.noise_augmentation` must be in [0, 1], got 1.5",
        ),
        (
            Box::new(|m| m["stages"][1]["path"] = json!("../elsewhere")),
            "`path` must be a folder inside the repository",
        ),
        (
            Box::new(|m| {
                let stages = m["stages"].as_array_mut().expect("stages");
                stages.truncate(1);
            }),
            "found 1 stage(s)",
        ),
    ];
    for (edit, expected) in cases {
        let (_dir, root) = tiny_repository()?;
        edit_json(&root.join("manifest.json"), edit)?;
        let err = open_err(&root);
        assert!(
            err.contains("manifest.json") && err.contains(expected),
            "expected {expected:?} in {err}"
        );
    }
    Ok(())
}

#[test]
fn configs_that_disagree_with_the_cascade_name_the_config_file() -> anyhow::Result<()> {
    let cases: Vec<(&str, JsonEdit, &str)> = vec![
        (
            "base",
            Box::new(|c| c["context_dim"] = json!(32)),
            "context_dim 32 must equal the text encoder's d_model 16",
        ),
        (
            "tsr",
            // A v-prediction TSR without a conditioning video: the cascade check names the field.
            Box::new(|c| {
                c["cond_channels"] = json!(0);
                c["prediction"] = json!("v");
            }),
            "cond_channels must be 3",
        ),
        (
            "tsr",
            Box::new(|c| c["cond_channels"] = json!(0)),
            "invalid config `prediction`",
        ),
        (
            "base",
            Box::new(|c| c["max_frames"] = json!(2)),
            "temporal attention covers max_frames = 2",
        ),
        (
            "ssr",
            Box::new(|c| c["channel_mult"] = json!([1, 1, 1, 1, 1])),
            "attention_levels",
        ),
        (
            "base",
            Box::new(|c| c["norm_groups"] = json!(5)),
            "invalid config `norm_groups`",
        ),
        (
            "base",
            Box::new(|c| c["surprise"] = json!(1)),
            "unknown field `surprise`",
        ),
        (
            "text-encoder",
            Box::new(|c| c["feed_forward_proj"] = json!("gated-tanh")),
            "unknown activation `tanh`",
        ),
    ];
    for (stage, edit, expected) in cases {
        let (_dir, root) = tiny_repository()?;
        let path = root.join(stage).join("config.json");
        edit_json(&path, edit)?;
        let err = open_err(&root);
        assert!(
            err.contains(&format!("{stage}/config.json")) && err.contains(expected),
            "expected {expected:?} in {err}"
        );
    }
    Ok(())
}

#[test]
fn a_missing_config_names_the_file() -> anyhow::Result<()> {
    let (_dir, root) = tiny_repository()?;
    std::fs::remove_file(root.join("ssr/config.json"))?;
    let err = open_err(&root);
    assert!(
        err.contains("cannot read") && err.contains("ssr/config.json"),
        "{err}"
    );
    Ok(())
}

fn load_unet_err(root: &Path, stage: &str) -> anyhow::Result<String> {
    let repo = ModelRepository::open(root)?;
    Ok(repo
        .load_unet(stage, &Device::Cpu)
        .expect_err("must fail")
        .to_string())
}

#[test]
fn weight_errors_name_file_tensor_and_shapes() -> anyhow::Result<()> {
    // Missing file.
    let (_dir, root) = tiny_repository()?;
    std::fs::remove_file(root.join("tsr/model.safetensors"))?;
    let err = load_unet_err(&root, "tsr")?;
    assert!(
        err.contains("cannot read") && err.contains("tsr/model.safetensors"),
        "{err}"
    );

    // Not safetensors at all.
    let (_dir, root) = tiny_repository()?;
    std::fs::write(
        root.join("base/model.safetensors"),
        b"definitely not a safetensors file",
    )?;
    let err = load_unet_err(&root, "base")?;
    assert!(
        err.contains("base/model.safetensors: not a valid safetensors file"),
        "{err}"
    );

    // Missing tensor.
    let (_dir, root) = tiny_repository()?;
    edit_weights(&root.join("base/model.safetensors"), |t| {
        t.remove("mid.attn.cross_kv.weight");
    })?;
    let err = load_unet_err(&root, "base")?;
    assert!(
        err.contains("base/model.safetensors: tensor `mid.attn.cross_kv.weight` is missing (the config expects shape [64, 16])"),
        "{err}"
    );

    // Wrong shape.
    let (_dir, root) = tiny_repository()?;
    edit_weights(&root.join("ssr/model.safetensors"), |t| {
        if let Ok(x) = Tensor::zeros((16, 6, 5, 5), DType::F32, &Device::Cpu) {
            t.insert("conv_in.weight".into(), x);
        }
    })?;
    let err = load_unet_err(&root, "ssr")?;
    assert!(
        err.contains("ssr/model.safetensors: tensor `conv_in.weight` has shape [16, 6, 5, 5], but the config expects [16, 6, 3, 3]"),
        "{err}"
    );

    // A tensor the config does not explain.
    let (_dir, root) = tiny_repository()?;
    edit_weights(&root.join("tsr/model.safetensors"), |t| {
        if let Ok(x) = Tensor::zeros(4, DType::F32, &Device::Cpu) {
            t.insert("down.9.extra.weight".into(), x);
        }
    })?;
    let err = load_unet_err(&root, "tsr")?;
    assert!(
        err.contains("unexpected tensor `down.9.extra.weight` with shape [4]"),
        "{err}"
    );

    // A dtype we do not load.
    let (_dir, root) = tiny_repository()?;
    edit_weights(&root.join("base/model.safetensors"), |t| {
        if let Ok(x) = Tensor::zeros(16, DType::I64, &Device::Cpu) {
            t.insert("conv_in.bias".into(), x);
        }
    })?;
    let err = load_unet_err(&root, "base")?;
    assert!(
        err.contains("tensor `conv_in.bias` has dtype I64; expected F32, F16 or BF16"),
        "{err}"
    );

    // Unknown stage.
    let (_dir, root) = tiny_repository()?;
    let err = load_unet_err(&root, "text-encoder")?;
    assert!(
        err.contains("no diffusion stage named `text-encoder`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn text_encoder_errors_name_the_file() -> anyhow::Result<()> {
    let encoder_err = |root: &Path| -> anyhow::Result<String> {
        let repo = ModelRepository::open(root)?;
        Ok(repo
            .load_text_encoder(&Device::Cpu)
            .expect_err("must fail")
            .to_string())
    };

    let (_dir, root) = tiny_repository()?;
    std::fs::remove_file(root.join("text-encoder/tokenizer.json"))?;
    let err = encoder_err(&root)?;
    assert!(
        err.contains("text-encoder/tokenizer.json: cannot load tokenizer"),
        "{err}"
    );

    let (_dir, root) = tiny_repository()?;
    edit_json(&root.join("text-encoder/config.json"), |c| {
        c["vocab_size"] = json!(8)
    })?;
    let err = encoder_err(&root)?;
    assert!(
        err.contains("the tokenizer has 23 tokens but config.json's vocab_size is 8"),
        "{err}"
    );

    let (_dir, root) = tiny_repository()?;
    edit_weights(&root.join("text-encoder/model.safetensors"), |t| {
        t.remove("encoder.block.1.layer.1.DenseReluDense.wi_0.weight");
    })?;
    let err = encoder_err(&root)?;
    assert!(
        err.contains("tensor `encoder.block.1.layer.1.DenseReluDense.wi_0.weight` is missing (the config expects shape [32, 16])"),
        "{err}"
    );
    Ok(())
}
