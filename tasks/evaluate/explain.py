"""Explanations of a text classifier's predictions, and whether they are faithful.

- `explain`: token attributions by Integrated Gradients on the embedding layer (captum's
  `LayerIntegratedGradients`), towards the predicted class's probability. The baseline keeps the
  special tokens ([CLS], [SEP]) and replaces every other token by padding, so the attributions of
  a text's tokens sum to p(x) - p(baseline), within the reported convergence delta. Word pieces are
  merged into words for display (their attributions summed).
- `faithfulness`: ERASER's comprehensiveness and sufficiency (DeYoung et al., ACL 2020), as AOPC
  over the top 1/5/10/20/50% of tokens, the *deletion* variant: the tokens are removed from the
  sequence (not masked). Comprehensiveness = p(y|x) - p(y|x without the top tokens), higher is more
  faithful; sufficiency = p(y|x) - p(y|only the top tokens), lower is more faithful. The same
  numbers for a random attribution and for attention (the last layer's attention from [CLS],
  averaged over heads) are the baselines an attribution must beat.
- `agreement`: how alike two models' attributions are on the same texts (Kendall tau over the
  tokens, and the overlap of their top 20%), for a student against its teacher.

captum is the maintained library for the attribution itself; the faithfulness metrics and the
agreement are a few lines over the model's own forward pass and are written here (the ERASER
benchmark's code is a research repository, not a library).
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from graftline.tasks.errors import GraftlineError
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import ExplainParams, ModelParams

DEFAULTS = ExplainParams()  # one Integrated Gradients default for the lifecycle, `predict --explain` and `explain`

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)  # shares of a text's tokens removed or kept (ERASER's AOPC bins)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ExplainError(GraftlineError):
    """A text or a model that cannot be explained."""


@dataclass(frozen=True)
class Explanation:
    """One prediction and the attribution of each of its tokens (special tokens left out)."""

    text: str
    ids: list[int]  # the token ids of the text, special tokens included (what the model read)
    positions: list[int]  # where in `ids` the tokens of `tokens` are (the others are special tokens)
    tokens: list[str]  # the word pieces, special tokens left out
    attributions: np.ndarray  # one per token in `tokens`: its push towards `label`
    label: str  # predicted
    probability: float  # of the predicted label
    delta: float  # IG convergence delta: |sum(attributions) - (p(x) - p(baseline))|
    true_label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)

    def words(self) -> list[tuple[str, float]]:
        """Word pieces merged into words (`##` continuations), their attributions summed."""
        merged: list[list] = []
        for token, score in zip(self.tokens, self.attributions, strict=True):
            if token.startswith("##") and merged:
                merged[-1][0] += token[2:]
                merged[-1][1] += float(score)
            else:
                merged.append([token, float(score)])
        return [(word, score) for word, score in merged]

    def top_words(self, k: int = 5) -> list[str]:
        return [w for w, s in sorted(self.words(), key=lambda ws: -ws[1])[:k] if s > 0]


def _probabilities(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)


def _encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def explain(
    model,
    tokenizer,
    texts: list[str],
    max_length: int = ModelParams().max_length,
    n_steps: int = DEFAULTS.n_steps,
    internal_batch_size: int = DEFAULTS.internal_batch_size,
    true_labels: list[str] | None = None,
) -> list[Explanation]:
    """Integrated Gradients towards each text's predicted class, one text at a time (no padding to
    attribute); `n_steps` points on the path, `internal_batch_size` of them per forward pass."""
    from captum.attr import LayerIntegratedGradients

    if not texts or any(not t.strip() for t in texts):
        raise ExplainError("nothing to explain: an empty text")
    if n_steps < 2 or internal_batch_size < 1:
        raise ExplainError(f"n_steps {n_steps} (at least 2) and internal_batch_size {internal_batch_size} (at least 1)")
    from graftline.tasks.engine.backbones import labels_of

    model.eval()
    labels = labels_of(model)
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def forward(ids, mask):
        return _probabilities(model, ids, mask)

    integrated = LayerIntegratedGradients(forward, model.get_input_embeddings())
    out = []
    for i, (text, ids) in enumerate(zip(texts, _encode(tokenizer, texts, max_length), strict=True)):
        inputs = torch.tensor([ids])
        mask = torch.ones_like(inputs)
        with torch.no_grad():
            probabilities = _probabilities(model, inputs, mask)[0]
        target = int(probabilities.argmax())
        baseline = torch.tensor([[t if t in special else pad for t in ids]])
        attributions, delta = integrated.attribute(
            inputs,
            baselines=baseline,
            target=target,
            additional_forward_args=(mask,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        scores = attributions.sum(-1)[0].detach().numpy()
        keep = [j for j, t in enumerate(ids) if t not in special]
        out.append(
            Explanation(
                text=text,
                ids=ids,
                positions=keep,
                tokens=tokenizer.convert_ids_to_tokens([ids[j] for j in keep]),
                attributions=scores[keep],
                label=labels[target],
                probability=float(probabilities[target]),
                delta=float(abs(delta.item())),
                true_label=true_labels[i] if true_labels is not None else None,
                probabilities={label: float(p) for label, p in zip(labels, probabilities, strict=True)},
            )
        )
    return out


def attention_scores(model, explanation: Explanation) -> np.ndarray:
    """The attention baseline: last layer, from [CLS] to each token, averaged over heads."""
    ids = torch.tensor([explanation.ids])
    current = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")  # fused kernels (sdpa) return no attention weights
        with torch.no_grad():
            attentions = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True).attentions
    except (ValueError, AttributeError) as error:
        raise ExplainError(f"the model returns no attention weights ({error})") from None
    finally:
        if model.config._attn_implementation != current:
            model.set_attn_implementation(current)
    if not attentions or attentions[-1] is None:
        raise ExplainError("the model returned no attention weights")
    row = attentions[-1][0].float().mean(0)[0].numpy()  # heads averaged, from position 0 ([CLS])
    return _non_special(row, explanation)


def _non_special(per_position: np.ndarray, explanation: Explanation) -> np.ndarray:
    """Values of the non-special positions: the ones `explanation.tokens` lists."""
    return per_position[explanation.positions]


@dataclass(frozen=True)
class Faithfulness:
    """AOPC comprehensiveness (higher: more faithful) and sufficiency (lower: more faithful)."""

    comprehensiveness: float
    sufficiency: float


def faithfulness(model, explanations: list[Explanation], scores: list[np.ndarray] | None = None) -> Faithfulness:
    """ERASER's AOPC over BINS, deletion variant, of `scores` (default: each explanation's own
    attributions) ranking the tokens; the probability is of the originally predicted label."""
    from graftline.tasks.engine.backbones import labels_of

    labels = labels_of(model)
    comprehensive, sufficient = [], []
    for i, e in enumerate(explanations):
        ranking = np.argsort(-(e.attributions if scores is None else scores[i]), kind="stable")
        positions = e.positions
        if len(positions) != len(ranking):
            raise ExplainError("scores and tokens differ in length")
        target, full = labels.index(e.label), e.probability
        removed, kept = [], []
        for share in BINS:
            k = max(1, int(round(share * len(ranking))))
            top = {positions[j] for j in ranking[:k]}
            removed.append([t for p, t in enumerate(e.ids) if p not in top])
            kept.append([t for p, t in enumerate(e.ids) if p in top or p not in set(positions)])
        p_removed = _batch_probabilities(model, removed)[:, target]
        p_kept = _batch_probabilities(model, kept)[:, target]
        comprehensive.append(float(np.mean(full - p_removed)))
        sufficient.append(float(np.mean(full - p_kept)))
    return Faithfulness(float(np.mean(comprehensive)), float(np.mean(sufficient)))


def _batch_probabilities(model, sequences: list[list[int]]) -> np.ndarray:
    longest = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    with torch.no_grad():
        return _probabilities(model, ids, mask).numpy()


def random_scores(explanations: list[Explanation], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(len(e.tokens)) for e in explanations]


@dataclass(frozen=True)
class Agreement:
    kendall_tau: float  # mean over texts of Kendall's tau between the two attributions
    top_overlap: float  # mean share of the top 20% tokens both name


def agreement(first: list[Explanation], second: list[Explanation]) -> Agreement:
    """How alike two models' attributions are on the same texts (same tokenizer)."""
    from scipy.stats import kendalltau

    taus, overlaps = [], []
    for a, b in zip(first, second, strict=True):
        if a.ids != b.ids:
            raise ExplainError("the two models tokenise the texts differently: their attributions cannot be compared")
        if len(a.tokens) > 1:
            tau = kendalltau(a.attributions, b.attributions).statistic
            taus.append(0.0 if np.isnan(tau) else float(tau))
        k = max(1, int(round(0.2 * len(a.tokens))))
        top_a, top_b = set(np.argsort(-a.attributions)[:k]), set(np.argsort(-b.attributions)[:k])
        overlaps.append(len(top_a & top_b) / k)
    return Agreement(float(np.mean(taus)) if taus else 0.0, float(np.mean(overlaps)))


def class_cues(explanations: list[Explanation], top: int = 3, keep: int = 10) -> dict[str, list[tuple[str, int]]]:
    """Per predicted label, the words that most often are among a text's `top` pushes towards it."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in explanations:
        counts[e.label].update(w.lower() for w in e.top_words(top) if w.isalnum())
    return {label: c.most_common(keep) for label, c in sorted(counts.items())}


def _shade(score: float, scale: float) -> str:
    strength = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    colour = "220, 50, 47" if score > 0 else "38, 139, 210"  # towards the label: red; away: blue
    return f"rgba({colour}, {strength:.2f})"


def html_report(sets: dict[str, list[Explanation]], title: str, cues: dict[str, dict] | None = None) -> str:
    """A self-contained page: each text's words shaded by attribution, with prediction, truth and
    confidence; per set, the words that push towards each class. Every text is escaped."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}.t{margin:.6em 0;line-height:1.9}"
        "span.w{padding:1px 2px;border-radius:3px}.m{color:#555;font-size:.85em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>Red: pushes towards the predicted label; blue: away from it "
        "(Integrated Gradients on the embeddings).</p>",
    ]
    for name, explanations in sets.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if cues and name in cues:
            listed = {label: ", ".join(f"{w} ({n})" for w, n in words) for label, words in cues[name].items()}
            rows = "".join(
                f"<tr><td>{html.escape(label)}</td><td>{html.escape(words)}</td></tr>"
                for label, words in listed.items()
            )
            parts.append(f"<table><tr><th>predicted</th><th>words that push towards it (texts)</th></tr>{rows}</table>")
        for e in explanations:
            words = e.words()
            scale = max((abs(s) for _, s in words), default=0.0)
            shaded = " ".join(
                f"<span class='w' style='background:{_shade(s, scale)}' title='{s:+.4f}'>{html.escape(w)}</span>"
                for w, s in words
            )
            truth = f", true <b>{html.escape(e.true_label)}</b>" if e.true_label is not None else ""
            wrong = " (wrong)" if e.true_label is not None and e.true_label != e.label else ""
            parts.append(
                f"<div class='t'>{shaded}<div class='m'>predicted <b>{html.escape(e.label)}</b> "
                f"({e.probability:.3f}){truth}{wrong}; delta {e.delta:.2g}</div></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, sets: dict[str, list[Explanation]], title: str, cues=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(sets, title, cues), encoding="utf-8")
    return path


# -- the lifecycle's explain step ---------------------------------------------------------------


@dataclass(frozen=True)
class ExplainReport:
    """Explanations of a sample of every evaluation set, and what they are worth."""

    sets: dict[str, list[Explanation]]
    faithfulness: dict[str, Faithfulness]  # ig | attention | random, over every explained text
    cues: dict[str, dict[str, list[tuple[str, int]]]]  # set -> predicted label -> (word, texts)
    seconds_per_example: float
    agreement: Agreement | None = None  # with the teacher, for a student
    role: str = ""  # the model explained (teacher | student), once the step has written its page
    page: Path | None = None  # the HTML report

    def metrics(self) -> dict[str, float]:
        out = {"explained_texts": float(sum(len(e) for e in self.sets.values()))}
        out["explain_seconds_per_example"] = self.seconds_per_example
        out["ig_mean_delta"] = float(np.mean([e.delta for es in self.sets.values() for e in es]))
        for method, f in self.faithfulness.items():
            out[f"{method}_comprehensiveness"], out[f"{method}_sufficiency"] = f.comprehensiveness, f.sufficiency
        if self.agreement is not None:
            out["teacher_agreement_kendall_tau"] = self.agreement.kendall_tau
            out["teacher_agreement_top20_overlap"] = self.agreement.top_overlap
        return out

    def logged(self) -> StepLog:
        """The metrics, the HTML page and the class cues, and a line on faithfulness (and agreement)."""
        import json

        texts = sum(len(e) for e in self.sets.values())
        ig, random = self.faithfulness["ig"].comprehensiveness, self.faithfulness["random"].comprehensiveness
        agreed = f"; agreement with the teacher: Kendall tau {self.agreement.kendall_tau:.3f}" if self.agreement else ""
        return StepLog(
            metrics=self.metrics(),
            files=[(self.page, "explain")] if self.page else [],
            dicts={"explain/class_cues.json": json.loads(json.dumps(self.cues))},
            lines=[
                f"{self.role} explanations: {texts} texts, {self.seconds_per_example:.2f} s each; "
                f"comprehensiveness IG {ig:.3f} vs random {random:.3f}{agreed}"
            ],
        )

    def texts(self) -> dict[str, tuple[list[str], list[str | None]]]:
        """What was explained per set (texts, true labels): a student is explained on the same."""
        return {name: ([e.text for e in es], [e.true_label for e in es]) for name, es in self.sets.items()}


def choose(model, tokenizer, split, rows: int, errors: int, max_length: int, seed: int) -> tuple[list[str], list[str]]:
    """`rows` texts of `split` drawn at random, then its `errors` most confident errors not already drawn."""
    from graftline.tasks.data.splits import encode_labels
    from graftline.tasks.engine.backbones import labels_of
    from graftline.tasks.engine.training import encode, predict_logits

    frame = split.frame[split.frame["text"].fillna("").str.strip() != ""].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    drawn = list(rng.permutation(len(frame))[:rows])
    if errors:
        labels = labels_of(model)
        truth = np.asarray(encode_labels(frame["label"], labels, split.name))
        logits = predict_logits(
            model, encode(tokenizer, frame["text"].tolist(), truth, max_length), 64, tokenizer.pad_token_id
        )
        wrong = np.flatnonzero(logits.argmax(-1) != truth)
        confident = wrong[np.argsort(-logits[wrong].max(-1), kind="stable")]
        drawn += [int(i) for i in confident if i not in set(drawn)][:errors]
    return frame["text"].iloc[drawn].tolist(), frame["label"].iloc[drawn].tolist()


def explain_sets(model_dir: Path, splits, params, model_params, teacher: ExplainReport | None = None) -> ExplainReport:
    """The explain step's work: IG on a sample of every evaluation set (a student: on its teacher's
    sample), faithfulness against random and attention, word cues per class, agreement with a teacher."""
    import time

    from graftline.tasks.engine.backbones import load_classifier, load_tokenizer

    classifier, tokenizer = load_classifier(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    length = model_params.max_length
    if teacher is not None:
        chosen = teacher.texts()
    else:
        chosen = {
            name: choose(classifier, tokenizer, split, params.rows, params.errors, length, model_params.seed)
            for name, split in splits.evaluation_sets().items()
        }
    started = time.perf_counter()
    sets = {
        name: explain(classifier, tokenizer, texts, length, params.n_steps, params.internal_batch_size, truths)
        for name, (texts, truths) in chosen.items()
    }
    seconds = time.perf_counter() - started
    every = [e for es in sets.values() for e in es]
    scored = {
        "ig": faithfulness(classifier, every),
        "random": faithfulness(classifier, every, random_scores(every, model_params.seed)),
    }
    try:
        scored["attention"] = faithfulness(classifier, every, [attention_scores(classifier, e) for e in every])
    except ExplainError:
        pass  # a model that returns no attention weights: no attention baseline
    paired = None
    if teacher is not None:
        try:
            paired = agreement([e for es in teacher.sets.values() for e in es], every)
        except ExplainError:
            pass  # a student with another tokenizer: its tokens are not its teacher's
    cues = {name: class_cues(es) for name, es in sets.items()}
    return ExplainReport(sets, scored, cues, seconds / max(len(every), 1), paired)


def explain_step(
    model_dir: Path, role: str, splits, params, model_params, folder: Path, teacher: ExplainReport | None = None
) -> ExplainReport:
    """`explain_sets`, with its HTML page written into `folder`."""
    report = explain_sets(model_dir, splits, params, model_params, teacher)
    page = write_html(folder / "explanations.html", report.sets, f"{role}: explanations", report.cues)
    return replace(report, role=role, page=page)
