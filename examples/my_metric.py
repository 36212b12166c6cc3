"""A user metric: confidently wrong. The share of a variant's answered records that are wrong although
the model put at least 0.9 of its letter probability on the letter it answered: the errors a
confidence threshold would not catch. Null (not computable) for a backend without letter
probabilities.

    vlmstress eval --include examples/my_metric.py --model tiny --data synth:20 --variants base,wrong_think

metrics.json then holds it for every variant as `variants.V.user_metrics.confidently_wrong`, and
summary.md shows it in a table of its own.
"""

from vlmstress import register_metric

CONFIDENT = 0.9


@register_metric("confidently_wrong")
def confidently_wrong(records) -> float | None:
    # `records`: the variant's records without an error, as mappings (the fields metrics.json is
    # computed from: answer, correct, target, letter_probs, judge, ...).
    scored = [r for r in records if r["letter_probs"] and r["answer"] is not None]
    if not scored:
        return None
    hits = [not r["correct"] and r["letter_probs"].get(r["answer"], 0.0) >= CONFIDENT for r in scored]
    return sum(hits) / len(scored)
