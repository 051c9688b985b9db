"""Dialogue response generation (DailyDialog) on the encoder-decoder Transformer, its metrics, and ``chat``.

An example is the preceding ``data.context_turns`` turns, joined by the turn separator (``dialogue_corpora``), ->
the next turn. The task is ``summarise.LongSourceTask`` (no length-ratio filter; a context longer than
``data.truncate_src`` sub-words keeps its most recent ones, reported); the best checkpoint is the one with the lowest
validation perplexity, and validation also decodes the first ``train.bleu_max_sentences`` contexts (greedy) for
BLEU-1/2 and distinct-1/2.

Metrics (``dialogue_scores``), on the detokenised responses split on whitespace (DailyDialog's text is already
tokenised with spaces around punctuation, and the outputs keep that form):
- perplexity of the references, per sub-word and per word (the same summed loss over whitespace words + one end of
  turn each, which is what word-level papers report);
- BLEU-1 and BLEU-2: sacreBLEU corpus BLEU with ``max_ngram_order`` 1 and 2 (brevity penalty included);
- distinct-1 and distinct-2 (Li et al. 2016): distinct n-grams / all n-grams over every generated response.
"""

from __future__ import annotations

import sys
from typing import BinaryIO, TextIO

from .console import log
from .datasets import Corpus, ParallelText
from .dialogue_corpora import TURN_SEP, join_turns, load_dailydialog
from .evaluate import bleu, perplexity
from .summarise import LongSourceTask, cut_source_ids, mean_length, reference_loss_and_outputs, source_limit_of
from .tasks import decode_sources

DIALOGUE_DATA_DEFAULTS: dict = dict(
    corpus="dailydialog",
    src="context",
    tgt="response",
    max_tokens=0,  # no whitespace-length filter (contexts are cut instead)
    max_ratio=0.0,  # no length-ratio filter: a long context and a short reply ("Yes .") are normal
    context_turns=3,  # k: the turns before the response that the model reads
    truncate_src=128,  # context sub-words kept (the most recent; also capped by model.max_len - 2)
)


def distinct(texts, n: int) -> float:
    """distinct-n: the number of distinct n-grams over all ``texts`` (whitespace tokens) / the number of n-grams."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def dialogue_scores(hyps, refs) -> dict:
    """BLEU-1/2 (sacreBLEU corpus BLEU of order 1 and 2) and distinct-1/2 of detokenised responses."""
    hyps, refs = list(hyps), list(refs)
    return {
        "bleu1": bleu(hyps, refs, max_ngram_order=1).score,
        "bleu2": bleu(hyps, refs, max_ngram_order=2).score,
        "distinct1": distinct(hyps, 1),
        "distinct2": distinct(hyps, 2),
        "mean_words": mean_length(hyps),
        "responses": len(hyps),
    }


def word_perplexity(total_loss: float, references) -> float:
    """The summed loss (nats) of the references per whitespace word, counting one end of turn per reference."""
    return perplexity(total_loss, sum(len(r.split()) + 1 for r in references))


class DialogueTask(LongSourceTask):
    metric, metric_mode = "valid_ppl", "min"
    data_defaults = DIALOGUE_DATA_DEFAULTS
    cut_side = "left"  # a long context keeps its most recent turns

    def load_corpus(self, data: dict) -> Corpus:
        return load_dialogue_corpus(data)

    def validate(self, model, settings):
        metrics = self.reference_loss(model, settings)
        outputs, references = self.decode_valid(model, settings)
        scores = dialogue_scores(outputs, references)
        metrics.update({f"valid_{key}": scores[key] for key in ("bleu1", "bleu2", "distinct1", "distinct2")})
        return metrics


def load_dialogue_corpus(data: dict) -> Corpus:
    """DailyDialog as a [data] section (over ``DIALOGUE_DATA_DEFAULTS``) says."""
    if data["corpus"] != "dailydialog":
        raise ValueError(f"[data] corpus {data['corpus']!r}: dialogue reads 'dailydialog'")
    return load_dailydialog(
        data_dir=data["data_dir"] or None, context_turns=int(data["context_turns"]), on_bad=data["on_bad"]
    )


def evaluate_dialogue(
    model,
    src_tok,
    tgt_tok,
    pairs: ParallelText,
    data: dict,
    *,
    beam=1,
    alpha=0.6,
    no_repeat_ngram_size=0,
    sampling=None,
    max_tokens=8000,
    progress=False,
) -> tuple[dict, list[str]]:
    """What ``evaluate`` reports for a dialogue checkpoint: the references' perplexity (per sub-word and per word)
    and BLEU-1/2, distinct-1/2 of generated responses (greedy, beam search, or sampling). Returns (scores, replies)."""
    if len(pairs) == 0:
        raise ValueError("there are no dialogue turns to evaluate")
    total, tokens, outputs = reference_loss_and_outputs(
        model,
        src_tok,
        tgt_tok,
        pairs,
        data,
        "left",
        max_tokens,
        progress,
        beam=beam,
        alpha=alpha,
        no_repeat_ngram_size=no_repeat_ngram_size,
        sampling=sampling,
    )
    outputs = [clean_reply(o) for o in outputs]
    scores = {
        "loss": total / tokens,
        "perplexity": perplexity(total, tokens),
        "word_perplexity": word_perplexity(total, pairs.tgt),
        **dialogue_scores(outputs, pairs.tgt),
        "decoding": {"beam": beam, "alpha": alpha, "no_repeat_ngram_size": no_repeat_ngram_size, "sampling": sampling},
    }
    return scores, outputs


def clean_reply(text: str) -> str:
    """A reply is one turn: a separator the model produced inside it becomes a space."""
    return " ".join(text.replace(TURN_SEP, " ").split())


# ---------------------------------------------------------------------------------------------- chat
class Chat:
    """A conversation with a dialogue model: ``respond(message)`` adds the message to the history, replies from the
    last ``context_turns`` turns (the user's and the model's), and adds the reply; ``reset()`` forgets it all."""

    def __init__(self, model, src_tok, tgt_tok, data: dict, **decoding):
        self.model, self.src_tok, self.tgt_tok = model, src_tok, tgt_tok
        data = {**DIALOGUE_DATA_DEFAULTS, **data}
        self.context_turns = int(data["context_turns"])
        self.limit = source_limit_of(model, data)
        self.decoding = decoding
        self.history: list[str] = []

    def context(self) -> str:
        return join_turns(self.history[-self.context_turns :])

    def respond(self, message: str) -> str:
        message = clean_reply(message)
        if not message:
            raise ValueError("an empty message")
        self.history.append(message)
        src = cut_source_ids(self.src_tok.encode([self.context()]), self.limit, "left", what="context")
        reply = clean_reply(decode_sources(self.model, self.tgt_tok, src, **self.decoding)[0]) or "..."
        self.history.append(reply)
        return reply

    def reset(self) -> None:
        self.history.clear()


CHAT_HELP = "type a message and press Enter; /reset starts a new conversation, /quit (or end of input) ends"


def chat_loop(chat: Chat, stdin: BinaryIO, stdout: TextIO, *, show_context: bool = False, prompt: bool = False) -> int:
    """Read messages from ``stdin`` (bytes, one a line) until /quit or end of input, printing each reply on
    ``stdout``. A line that is empty or not UTF-8 is refused with a note on standard error and the loop goes on.
    Returns the number of replies."""
    replies = 0
    log.info(f"chat: {CHAT_HELP}")
    for number, raw in enumerate(iter(stdin.readline, b""), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            print(f"error: input line {number} is not valid UTF-8 ({error.reason}); type it again", file=sys.stderr)
            continue
        if text == "/quit":
            break
        if text == "/reset":
            chat.reset()
            print("(new conversation)", file=stdout, flush=True)
            continue
        if text.startswith("/"):
            print(f"error: unknown command {text.split()[0]!r}; {CHAT_HELP}", file=sys.stderr)
            continue
        if not clean_reply(text):
            print(f"(empty message: {CHAT_HELP})", file=sys.stderr)
            continue
        reply = chat.respond(text)
        if show_context:
            print(f"[context] {join_turns(chat.history[-chat.context_turns - 1 : -1])}", file=sys.stderr)
        print(reply, file=stdout, flush=True)
        replies += 1
        if prompt:
            print("> ", end="", file=sys.stderr, flush=True)
    return replies
