"""What the evaluation needs from the data side, as gin-configurable functions.

`model/eval.py` never imports this module (model/ must not import tasks/ or SeqIO);
a gin file does, and binds these functions into the eval suites:

    import tasks.eval_inputs
    MMLUSuite.inputs_fn = @eval_inputs.mmlu_inputs
    eval_inputs.mmlu_inputs.num_shots = 5

Every function returns plain Python / numpy records. Token ids come from the
project vocabulary (`tasks/vocabulary.py`).

Example MMLU record:
    {"sample_id": "anatomy/0", "subject": "anatomy", "label": 1, "doc": "<CSV row json>",
     "prompt": "The following are ...\\nAnswer:", "choices": [" A", " B", " C", " D"],
     "context_ids": [...], "continuation_ids": [[...], [...], [...], [...]]}
"""
from __future__ import annotations

# One module per suite's inputs; this module keeps the public names (and gin's
# `eval_inputs.*` configurables, registered by the modules below) in one place.
from tasks.eval_long_context import insert_needle, niah_prompts
from tasks.eval_mmlu import mmlu_inputs
from tasks.eval_multimodal import caption_slot_vocab, multimodal_prompts, readable_prompt
from tasks.eval_text import text_documents, text_files
from tasks.eval_tokens import detokenizer, encode_pair, tokenizer
from tasks.eval_video_qa import parse_choices

__all__ = ["caption_slot_vocab", "detokenizer", "encode_pair", "insert_needle", "mmlu_inputs",
           "multimodal_prompts", "niah_prompts", "parse_choices", "readable_prompt",
           "text_documents", "text_files", "tokenizer"]
