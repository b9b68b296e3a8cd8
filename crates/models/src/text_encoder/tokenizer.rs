//! Tokenizers for the text encoder.
//!
//! Real T5 checkpoints ship a SentencePiece-derived `tokenizer.json`, which the `tokenizers` crate
//! loads as it is. Our small cascades use a word-level vocabulary instead (a closed world of
//! colours, shapes and motions needs no sub-words); [`word_level_tokenizer_json`] writes one in
//! the same file format, with T5's special-token layout (`<pad>` = 0, `</s>` = 1, `<unk>` = 2) and
//! T5's habit of ending every sequence with `</s>`.

use serde_json::{Value, json};

/// Id of the padding token (T5 layout).
pub const PAD_ID: u32 = 0;
/// Id of the end-of-sequence token (T5 layout).
pub const EOS_ID: u32 = 1;
/// Id of the unknown-word token (T5 layout).
pub const UNK_ID: u32 = 2;

/// A `tokenizer.json` for a lower-cased, whitespace-split word vocabulary. Words are numbered from
/// 3 in the order given; duplicates keep their first id.
pub fn word_level_tokenizer_json(words: &[&str]) -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<pad>".into(), json!(PAD_ID));
    vocab.insert("</s>".into(), json!(EOS_ID));
    vocab.insert("<unk>".into(), json!(UNK_ID));
    for word in words {
        let word = word.to_lowercase();
        if !vocab.contains_key(&word) {
            let id = vocab.len();
            vocab.insert(word, json!(id));
        }
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(PAD_ID, "<pad>"), special(EOS_ID, "</s>"), special(UNK_ID, "<unk>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}}
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}}
            ],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [EOS_ID], "tokens": ["</s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tokenizers::Tokenizer;

    #[test]
    fn word_level_tokenizer_lowercases_splits_and_appends_eos() -> anyhow::Result<()> {
        let json = word_level_tokenizer_json(&["a", "red", "circle", "moving", "left"]);
        let tokenizer = Tokenizer::from_str(&json.to_string()).map_err(anyhow::Error::msg)?;
        let ids = tokenizer
            .encode("A Red  circle, moving sideways", true)
            .map_err(anyhow::Error::msg)?
            .get_ids()
            .to_vec();
        // a=3 red=4 circle=5 ","=unk moving=6 sideways=unk </s>
        assert_eq!(ids, vec![3, 4, 5, UNK_ID, 6, UNK_ID, EOS_ID]);
        let empty = tokenizer.encode("", true).map_err(anyhow::Error::msg)?;
        assert_eq!(empty.get_ids(), &[EOS_ID]);
        Ok(())
    }
}
