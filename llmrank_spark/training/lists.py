"""Training lists from behaviour: targets, their contexts, graded labels and sampled negatives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from llmrank_spark.config import RerankConfig, TrainConfig
from llmrank_spark.text import (
    ITEM_FIELDS,
    contexts_with_user_texts,
    user_context_frame,
    user_text_frame,
)

LIST, ITEM, LABEL = "list_id", "item_id", "label"

# ---- lists (pure pandas) -----------------------------------------------------------------------------


def leave_last_out(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training events, held-out labels): each user's latest event, ties by item_id, is held out."""
    ordered = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="mergesort")
    last = ~ordered.duplicated("user_id", keep="last")
    held_out = ordered.loc[last, ["user_id", "item_id"]].rename(columns={"user_id": "request_id"})
    return ordered.loc[~last], held_out.assign(relevance=1)


def event_grades(events: pd.DataFrame, cfg: TrainConfig) -> pd.Series:
    """Graded relevance in (0, 1] of each event: by event type (purchase > cart > click > view), or a
    rating's value / rating_scale."""
    is_rating = events["event_type"] == "rating"
    grades = events["event_type"].map(cfg.event_grades)
    grades = grades.where(~is_rating, events.get("value", pd.Series(np.nan, events.index)) / cfg.rating_scale)
    unknown = grades.isna()
    if unknown.any():
        row = events[unknown].iloc[0]
        raise ValueError(
            f"interactions: event_type '{row['event_type']}' of user '{row['user_id']}' has no grade "
            f"(a rating needs a value); add it to train.event_grades"
        )
    return grades.clip(lower=0.0, upper=1.0)


def target_grades(targets: pd.DataFrame, events: pd.DataFrame, cfg: TrainConfig) -> pd.Series:
    """Each target's grade: the best grade among the user's events on that item up to the target's time."""
    graded = events.assign(grade=event_grades(events, cfg))[["user_id", "item_id", "event_ts", "grade"]]
    paired = targets[[LIST, "user_id", "item_id", "event_ts"]].merge(
        graded, on=["user_id", "item_id"], suffixes=("", "_event")
    )
    best = paired[paired["event_ts_event"] <= paired["event_ts"]].groupby(LIST)["grade"].max()
    return targets[LIST].map(best).rename(LABEL)


def history_before(events: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Every event of a target's user strictly before the target's time, on other items than the target,
    keyed by the target's list_id.

    The leakage guard of list construction: nothing at or after t enters the context of a list at t, and
    neither does the target item itself. A target sits at its latest event, so its own earlier funnel
    steps (the view seconds before the purchase) would otherwise state the answer in the context, and
    the model would learn to find the item in the history rather than what the shopper chooses by.
    """
    joined = targets[[LIST, "user_id", "item_id", "event_ts"]].merge(
        events, on="user_id", suffixes=("_target", "")
    )
    before = joined[
        (joined["event_ts"] < joined["event_ts_target"]) & (joined["item_id"] != joined["item_id_target"])
    ]
    return before.drop(columns=["event_ts_target", "item_id_target"])


def target_contexts(
    events: pd.DataFrame,
    items: pd.DataFrame,
    targets: pd.DataFrame,
    cfg: RerankConfig,
    users: pd.DataFrame | None = None,
) -> pd.Series:
    """Context text per list_id, built as served: `user_context_frame` from `history_before`, after the
    user's `cfg.user_template` text when `users` is given (`contexts_with_user_texts`)."""
    fields = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    history = history_before(events[["user_id", "item_id", "event_ts"]], targets).merge(
        items[fields], on="item_id"
    )
    contexts = user_context_frame(history.drop(columns=["user_id"]).rename(columns={LIST: "user_id"}), cfg)
    user_text = pd.Series(None, index=targets.index, dtype=object)
    if cfg.user_template and users is not None:
        user_text = targets["user_id"].map(
            user_text_frame(users, cfg.user_template).set_index("request_id")["user_text"]
        )
    frame = pd.DataFrame(
        {
            "request_id": targets[LIST],
            "user_text": user_text,
            "context_text": targets[LIST].map(contexts.set_index("request_id")["context_text"]),
        }
    )
    return contexts_with_user_texts(frame).set_axis(targets.index)["context_text"]


def sample_lists(
    targets: pd.DataFrame,
    candidates: pd.DataFrame,
    interacted: pd.DataFrame,
    categories: pd.Series,
    cfg: TrainConfig,
    rng: np.random.Generator,
    item_events: pd.Series | None = None,
) -> pd.DataFrame:
    """(list_id, item_id, label) rows, `cfg.list_size` per target: its item, then negatives.

    `categories` maps every catalogue item_id to its category (None where it has none). Negatives are
    items the user never interacted with: up to `hard_negatives` drawn from the user's candidate list
    (what the reranker will have to sort out), up to `category_negatives` from the target's category
    (the choice the shopper made there: they differ from the target in attributes, not in kind), the
    rest at random from the catalogue. With `negative_popularity_power` p > 0, the category and
    catalogue draws take an item with probability proportional to (1 + its `item_events`)^p (missing:
    0 events) rather than uniformly.
    """
    seen = interacted.groupby("user_id")["item_id"].agg(set)
    proposed = candidates.groupby("request_id")["item_id"].agg(list)
    catalogue = categories.index.to_numpy()
    by_category = {c: group.index.to_numpy() for c, group in categories.groupby(categories)}
    draw_from_catalogue = _unseen_sampler(catalogue, item_events, cfg.negative_popularity_power)
    draw_from_category = {
        c: _unseen_sampler(pool, item_events, cfg.negative_popularity_power)
        for c, pool in by_category.items()
    }
    rows = []
    for target in targets.itertuples(index=False):
        excluded = seen.get(target.user_id, set()) | {target.item_id}
        hard = [item for item in proposed.get(target.user_id, []) if item not in excluded]
        n_hard = min(cfg.hard_negatives, len(hard), cfg.list_size - 1)
        chosen = [target.item_id, *rng.choice(np.array(hard, dtype=object), n_hard, replace=False)]
        same_category = draw_from_category.get(categories.get(target.item_id))
        if same_category:
            same_category(chosen, excluded, min(len(chosen) + cfg.category_negatives, cfg.list_size), rng)
        draw_from_catalogue(chosen, excluded, cfg.list_size, rng)
        if len(chosen) < cfg.list_size:
            raise ValueError(
                f"items: too few items user '{target.user_id}' has not interacted with to fill a list of "
                f"{cfg.list_size}; lower train.list_size"
            )
        labels = [target.label] + [0.0] * (len(chosen) - 1)
        rows += [(target.list_id, item, label) for item, label in zip(chosen, labels, strict=True)]
    return pd.DataFrame(rows, columns=[LIST, ITEM, LABEL])


def _unseen_sampler(
    pool: np.ndarray, item_events: pd.Series | None, power: float
) -> Callable[[list, set, int, np.random.Generator], None]:
    """A sampler that appends items of `pool` outside `excluded` and `chosen` until `chosen` holds
    `wanted` (or the pool has no more): uniformly, or (power > 0) in proportion to (1 + the item's
    events)^power.

    Popularity-proportional negatives are the sampled-softmax correction word2vec and two-tower
    recommenders use: the positive was chosen partly for being popular, so negatives as popular as the
    shoppers' choices leave the model the preferences to learn, not the popularity. Draws are by
    rejection, as the pool can be large; when that runs dry (the shopper touched most of the pool's
    weight), the rest are drawn from what is left.
    """
    weights = None
    if power > 0 and len(pool):
        events = pd.Series(item_events, dtype=float).reindex(pool).fillna(0.0).to_numpy()
        weights = (1.0 + events) ** power
        cumulative = np.cumsum(weights)

    def draw(chosen: list, excluded: set, wanted: int, rng: np.random.Generator) -> None:
        attempts = 100 * wanted
        while len(chosen) < wanted and attempts and len(pool):
            if weights is None:
                item = pool[rng.integers(len(pool))]
            else:
                item = pool[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")]
            attempts -= 1
            if item not in excluded and item not in chosen:
                chosen.append(item)
        if len(chosen) >= wanted:
            return
        left = np.array([item not in excluded and item not in chosen for item in pool], dtype=bool)
        if left.any():
            p = None if weights is None else weights[left] / weights[left].sum()
            size = min(wanted - len(chosen), int(left.sum()))
            chosen.extend(rng.choice(pool[left], size, replace=False, p=p))

    return draw


def rank_by_score(lists: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """(request_id, item_id, rank) of every list sorted by score, best first, ties by item_id."""
    scored = pd.DataFrame(
        {"request_id": lists[LIST].to_numpy(), ITEM: lists[ITEM].to_numpy(), "score": score}
    )
    scored = scored.sort_values(
        ["request_id", "score", ITEM], ascending=[True, False, True], kind="mergesort"
    )
    return scored.assign(rank=scored.groupby("request_id").cumcount() + 1)


def list_labels(lists: pd.DataFrame) -> pd.DataFrame:
    """The labels of `lists` in the (request_id, item_id, relevance) form `metrics` reads."""
    return pd.DataFrame(
        {
            "request_id": lists[LIST].to_numpy(),
            ITEM: lists[ITEM].to_numpy(),
            "relevance": lists[LABEL].to_numpy(),
        }
    )


def subsample(targets: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(targets) <= limit:
        return targets
    return targets.iloc[np.sort(rng.choice(len(targets), limit, replace=False))]
