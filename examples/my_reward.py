"""A user GRPO reward: concision. 1.0 for an assistant turn of at most 40 words, falling linearly to
0.0 at 120, so a policy is not paid for rambling before its answer. Name it in a GRPO config:

    rewards:
      - {fn: accuracy, weight: 1.0}
      - {fn: concise, weight: 0.1}

and train with `vlmstress train grpo --include examples/my_reward.py --config FILE.yaml`. (With
examples/ on PYTHONPATH, `fn: my_reward:concise_reward` names the same function without --include.)
"""

from vlmstress import register_reward
from vlmstress.train.rewards import assistant_turns

SHORT, LONG = 40, 120  # words


@register_reward("concise")
def concise_reward(prompts, completions, **columns) -> list[float]:
    # TRL's reward signature: the batch's prompts and completions, the other dataset columns as
    # keyword lists; one float per completion. The turn is prefill + completion, as TRL's rewards do.
    out = []
    for turn in assistant_turns(prompts, completions):
        words = len(turn.split())
        out.append(max(0.0, min(1.0, (LONG - words) / (LONG - SHORT))))
    return out
