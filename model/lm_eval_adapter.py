"""lm-evaluation-harness as a client of our model: the `tapestry` LM.

    python -m model.lm_eval_adapter --model tapestry \
        --model_args gin_file=gin/models/tiny.gin,checkpoint=/tmp/run \
        --tasks mmlu --num_fewshot 5 --batch_size 16 --output_path /tmp/lm_eval

is lm-eval's own command line (`lm_eval ...`, 0.4.x) with the `tapestry` model
registered; every lm-eval task runs on a Tapestry checkpoint without exporting it.
From Python: `lm_eval.simple_evaluate(model=TapestryLM(...), tasks=[...])`.

model_args: `gin_file` (a model gin file; several joined with '+'), `checkpoint` (a
MODEL_DIR, checkpoints/ dir or step dir; omitted: the untrained model from
`init_seed`), `step`, `vocab` (SentencePiece model; default ours), `max_length`
(default the config's max_len), `batch_size` (rows per jitted call).

Requests, as lm-eval's HF backend forms them (TemplateLM: context and continuation
encoded together and split, trailing context spaces moved to the continuation):
  loglikelihood          rows [0] + context + continuation (our start token 0 first,
                         as in training and model.eval), left-truncated to max_length;
                         (summed log p of the continuation, all tokens greedy?)
  loglikelihood_rolling  model.evaluation.scoring.rolling_requests windows
  generate_until         greedy decoding (model.decoding via model.eval), cut at `until`
Batched and length-bucketed as model/evaluation/scoring.py; jitted on one device.
lm_eval is imported here only: the trainer and model.eval never import this module.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from model.evaluation import scoring


def _sentencepiece(vocab: str | None):
    import sentencepiece as spm

    from model import fs
    from model.export_hf import default_vocab
    return spm.SentencePieceProcessor(model_proto=fs.read_bytes(vocab or default_vocab()))


def load_model(gin_file: str, checkpoint: str | None, step: int | None, init_seed: int,
               max_length: int | None) -> tuple[Any, Any]:
    """(DecoderOnlyModel from the gin file(s), params of the checkpoint or init)."""
    import gin

    from model import eval as eval_lib
    from model import gin_flags
    from model.models import DecoderOnlyModel
    files = [f for f in gin_file.split("+") if f]
    gin_flags.parse_gin_flags([f"--gin_file={f}" for f in files], "tapestry lm-eval model")
    model = DecoderOnlyModel()
    gin.clear_config()
    params, _ = eval_lib.load_params(model, checkpoint, step, init_seed,
                                     max_length or model.config.max_len)
    return model, params


@register_model("tapestry")
class TapestryLM(TemplateLM):
    """lm-eval model over DecoderOnlyModel scoring and greedy decoding."""

    def __init__(self, gin_file: str | None = None, checkpoint: str | None = None,
                 step: int | None = None, vocab: str | None = None,
                 max_length: int | None = None, batch_size: int | str = 16,
                 init_seed: int = 0, model: Any = None, params: Any = None,
                 **unused: Any):
        super().__init__()
        if model is None:
            if not gin_file:
                raise ValueError("tapestry model_args need gin_file=<model gin file> "
                                 "(and checkpoint=<MODEL_DIR>)")
            model, params = load_model(gin_file, checkpoint, int(step) if step else None,
                                       int(init_seed), int(max_length) if max_length else None)
        self.model, self.params = model, params
        self.sp = _sentencepiece(vocab)
        self._max_length = int(max_length or model.config.max_len)
        self.batch_size = 16 if batch_size in (None, "auto") else int(batch_size)
        self._score = jax.jit(self._score_impl)
        self._generate = None

    # -- tokens ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return 1  # </s>

    @property
    def prefix_token_id(self) -> int:
        return 0  # our start token (decoder inputs are targets shifted right by 0)

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int]:
        return list(self.sp.encode(string))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.sp.decode(list(tokens))

    # -- scoring -----------------------------------------------------------
    def _score_impl(self, params, batch, positions):
        """(log p [B,P] of the targets at positions, target is the argmax [B,P])."""
        logits = self.model.logits_at(params, batch, positions)
        targets = jnp.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ll = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return ll, jnp.argmax(logits, axis=-1) == targets

    def score_requests(self, requests: Sequence[scoring.Request]
                       ) -> list[tuple[float, bool]]:
        """(summed continuation log-likelihood, every continuation token greedy) each."""
        rows = [scoring.make_row(r, self._max_length) for r in requests]
        buckets = scoring.default_buckets(self._max_length)
        plan = scoring.plan_batches([len(r[1]) for r in rows], self.batch_size, buckets)
        out: list[tuple[float, bool]] = [None] * len(rows)  # type: ignore[list-item]
        for idx, length in plan:
            batch = scoring.build_batch([rows[i] for i in idx], length, self.batch_size,
                                        [None] * len(idx))
            p = max(rows[i][2] for i in idx)
            p = min(1 << (p - 1).bit_length(), length)  # few jit shapes
            positions = np.zeros((self.batch_size, p), np.int32)
            for r, i in enumerate(idx):
                n, n_cont = len(rows[i][1]), rows[i][2]
                positions[r] = np.minimum(n - n_cont + np.arange(p), n - 1)
            batch = {k: jnp.asarray(v) for k, v in batch.items()}
            ll, greedy = jax.device_get(self._score(self.params, batch, positions))
            for r, i in enumerate(idx):
                n_cont = rows[i][2]
                out[i] = (float(np.sum(ll[r, :n_cont], dtype=np.float64)),
                          bool(np.all(greedy[r, :n_cont])))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        reqs = []
        for _, context, continuation in requests:
            context = list(context)
            if context[:1] == [self.prefix_token_id]:  # empty context: lm-eval's prefix
                context = context[1:]
            reqs.append(scoring.Request(context, list(continuation)))
        return self.score_requests(reqs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            windows = scoring.rolling_requests(self.tok_encode(req.args[0]), self._max_length)
            scores = self.score_requests(windows)
            out.append(float(sum(s for s, _ in scores)))
        return out

    # -- generation --------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self._generate is None:
            from model import eval as eval_lib
            self._generate = eval_lib.make_generate_fn(self.model, self.params)
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            prompt = self.tok_encode(context)[-(self._max_length - max_new - 1):]
            ids = self._generate([(prompt, None)], max_new)[0]
            if self.eot_token_id in ids:
                ids = ids[:ids.index(self.eot_token_id)]
            text = self.tok_decode(ids)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the `tapestry` model registered."""
    from lm_eval.__main__ import cli_evaluate
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
