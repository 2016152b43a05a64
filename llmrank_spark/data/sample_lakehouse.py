"""The embedded sample lakehouse: a seeded e-commerce catalogue, its shoppers and their behaviour log.

The sample exists so that every job can be run and tested without private data, and so that later jobs
can be checked against a known truth. The generative story (every draw comes from one
``numpy.random.default_rng(seed)``, so a seed fixes every table; no wall-clock time is read):

1. Catalogue. Each item gets a category (``CATEGORIES``), a value for each of that category's attributes,
   a price band with a price inside the band's range, a brand drawn from a Zipf law over the category's
   brand pool (a few brands dominate, many are small) and a latent log-normal popularity. Title and
   description are composed from brand, model name, attribute values and the category noun, so the text
   carries the attributes.
2. Shoppers. Each user belongs to a segment (``SEGMENTS``), draws favourite categories (a Dirichlet around
   the segment's category affinities) and, per category, a preferred value of every attribute that drives
   the segment (brand included). Values the segment favours (budget shoppers: the budget price band) are
   picked with probability ``FAVOURED_VALUE_PROB``, otherwise any value of the category; favourite brands
   follow the brands' catalogue shares.
3. Behaviour. Every user has at least one session; the rest go to users by a log-normal activity, and
   whole sessions are kept until the log holds ``n_events`` events. Sessions fall over the ``days`` days
   before ``END_OF_LOG`` following a daily traffic curve. A session picks one of the user's categories by
   preference (some sessions start from a search query in that category) and views items chosen by a
   softmax over

       utility = log popularity + sum over the segment's drivers of weight * [item value == preferred value]
                 (+ SEARCH_MATCH_WEIGHT * query values the item matches, in search sessions)

   which, with the category choice above it, is a nested logit. Each view goes on down the funnel
   view -> click -> add_to_cart -> purchase with probabilities rising with the item's utility over the
   user's average in the category, so higher-utility items go further.
4. Search. Queries join one or two attribute values to a category noun ("waterproof leather hiking
   boots"), each term in a shopper's own words with probability ``shopper_phrasing`` ("rainproof
   leather trekking boots", ``SHOPPER_PHRASES``): the vocabulary gap lexical retrieval cannot cross and
   a model can learn from judged queries. Labels grade items 3 (category and every query value match),
   2 (some), 1 (category only) and 0 (another category). Every grade 3 and 2 item is judged, plus a
   sample of grade 1 and grade 0.
5. ``sample_truth`` holds each segment's driver weights and their rank: what an attribute-importance job
   has to recover.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llmrank_spark.config import SampleConfig

END_OF_LOG = pd.Timestamp("2026-10-31")  # fixed, so a seed yields the same log whenever it is run

PRICE_BANDS = ("budget", "mid-range", "premium")
PRICE_BAND_SHARES = (0.45, 0.37, 0.18)

# fmt: off
BRAND_POOLS: dict[str, tuple[str, ...]] = {
    "outdoor": (
        "Trailforge", "Ridgeline", "Northcairn", "Alpenrock", "Granite Peak", "Fjordland", "Cedar Hollow",
        "Basecamp Co.", "Timberwolf", "Stormridge", "Highmoor", "Kestrel Outdoor", "Wildfern", "Scree",
        "Boulder Bay", "Moraine",
    ),
    "sport": (
        "Stride Lab", "Pacewell", "Aerolite", "Tempo Athletics", "Sprintline", "Kinetix", "Flowform",
        "Veloci", "Runnel", "Zenmat", "Lotus & Oak", "Hydra", "Mile Marker", "Apex Motion", "Cadence",
    ),
    "apparel": (
        "Threadwell", "Common Loom", "Urban Weave", "Hemline", "Coastline Apparel", "Fieldnote",
        "Plainsong", "Knot & Needle", "Everyday Co.", "Marlow", "Saltwater", "Softspun", "Greenstitch",
        "Indigo Row",
    ),
    "audio": (
        "Sonique", "Auralis", "Bassline", "Echoform", "Quietwave", "Voltra", "Pulse Audio", "Nimbus Labs",
        "Resonant", "Tonic Audio", "Hertz & Co.", "Decibel",
    ),
    "home": (
        "Brewcraft", "Morning Ritual", "Kettle & Crane", "Lumio", "Brightnest", "Halo Works", "Grindhaus",
        "Copperpot", "Daybreak", "Hearthline", "Pourwell", "Crema Co.", "Gridlight", "Homestead",
    ),
}
BRAND_ZIPF_EXPONENT = 1.3  # share of the k-th brand of a category ~ k^-1.3: a long tail
MODEL_NAMES = (
    "Ascent", "Aria", "Atlas", "Breeze", "Compass", "Drift", "Echo", "Element", "Flow", "Glide", "Halo",
    "Horizon", "Journey", "Metro", "Nova", "Orbit", "Pulse", "Quest", "Range", "Summit", "Tempo", "Terra",
    "Vista", "Zephyr",
)
# fmt: on


@dataclass(frozen=True)
class Category:
    """A leaf category: its attribute schema (in the order the values read before the noun) and prices."""

    name: str  # the category as shoppers and the items table name it, e.g. "hiking boots"
    title_noun: str  # how a title names one item, e.g. "Hiking Boots", "Rain Jacket"
    brand_pool: str
    attributes: dict[str, tuple[str, ...]]  # price_band is added to every category
    title_attributes: tuple[str, ...]  # attributes whose values precede the noun in titles
    price_ranges: tuple[tuple[float, float], ...]  # (low, high) per PRICE_BANDS entry
    share: float  # relative share of the catalogue


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in [
        Category(
            name="hiking boots",
            title_noun="Hiking Boots",
            brand_pool="outdoor",
            attributes={
                "colour": ("brown", "black", "grey", "olive", "tan"),
                "fit": ("regular", "wide", "narrow"),
                "cut": ("low", "mid", "high"),
                "waterproofing": ("waterproof", "water-resistant", "breathable"),
                "material": ("leather", "suede", "synthetic", "recycled mesh"),
            },
            title_attributes=("waterproofing", "material"),
            price_ranges=((45, 90), (90, 170), (170, 320)),
            share=1.2,
        ),
        Category(
            name="running shoes",
            title_noun="Running Shoes",
            brand_pool="sport",
            attributes={
                "colour": ("black", "white", "blue", "red", "neon yellow", "grey"),
                "fit": ("regular", "wide", "narrow"),
                "cushioning": ("minimalist", "cushioned", "max-cushioned"),
                "terrain": ("road", "trail", "track"),
                "material": ("engineered mesh", "knit", "recycled mesh", "synthetic"),
            },
            title_attributes=("cushioning", "terrain"),
            price_ranges=((35, 70), (70, 130), (130, 220)),
            share=1.2,
        ),
        Category(
            name="rain jackets",
            title_noun="Rain Jacket",
            brand_pool="outdoor",
            attributes={
                "colour": ("navy", "black", "red", "yellow", "olive", "grey"),
                "fit": ("regular", "slim", "relaxed"),
                "waterproofing": ("waterproof", "water-resistant"),
                "material": ("nylon", "polyester", "recycled polyester", "gore-tex"),
                "hood": ("hooded", "packable hood", "hoodless"),
            },
            title_attributes=("waterproofing", "material"),
            price_ranges=((30, 70), (70, 160), (160, 380)),
            share=1.0,
        ),
        Category(
            name="backpacks",
            title_noun="Backpack",
            brand_pool="outdoor",
            attributes={
                "colour": ("black", "grey", "navy", "green", "orange"),
                "capacity": ("15 L", "25 L", "35 L", "50 L"),
                "waterproofing": ("waterproof", "water-resistant"),
                "material": ("nylon", "canvas", "cordura", "recycled polyester"),
            },
            title_attributes=("capacity", "waterproofing", "material"),
            price_ranges=((20, 50), (50, 110), (110, 260)),
            share=1.0,
        ),
        Category(
            name="t-shirts",
            title_noun="T-Shirt",
            brand_pool="apparel",
            attributes={
                "colour": ("white", "black", "grey", "navy", "red", "green"),
                "fit": ("regular", "slim", "relaxed", "oversized"),
                "material": ("cotton", "polyester", "organic cotton", "merino wool", "recycled polyester"),
                "neckline": ("crew neck", "v-neck"),
                "sleeve": ("short sleeve", "long sleeve"),
            },
            title_attributes=("fit", "material", "neckline"),
            price_ranges=((8, 18), (18, 40), (40, 90)),
            share=1.4,
        ),
        Category(
            name="headphones",
            title_noun="Headphones",
            brand_pool="audio",
            attributes={
                "colour": ("black", "white", "silver", "blue"),
                "connectivity": ("bluetooth", "true wireless", "wired"),
                "noise_control": ("noise-cancelling", "standard"),
                "form_factor": ("over-ear", "on-ear", "in-ear"),
                "material": ("plastic", "aluminium", "recycled plastic"),
            },
            title_attributes=("connectivity", "noise_control", "form_factor"),
            price_ranges=((20, 60), (60, 150), (150, 400)),
            share=1.1,
        ),
        Category(
            name="coffee makers",
            title_noun="Coffee Maker",
            brand_pool="home",
            attributes={
                "colour": ("black", "silver", "white", "red", "copper"),
                "capacity": ("1 cup", "4 cups", "8 cups", "12 cups"),
                "connectivity": ("wifi", "manual"),
                "brew_type": ("drip", "espresso", "pod", "french press", "pour-over"),
                "material": ("stainless steel", "plastic", "glass"),
            },
            title_attributes=("connectivity", "brew_type"),
            price_ranges=((25, 70), (70, 200), (200, 600)),
            share=0.8,
        ),
        Category(
            name="desk lamps",
            title_noun="Desk Lamp",
            brand_pool="home",
            attributes={
                "colour": ("black", "white", "brass", "grey"),
                "light": ("warm white", "cool white", "adjustable white", "RGB"),
                "connectivity": ("wifi", "bluetooth", "manual"),
                "material": ("aluminium", "steel", "bamboo", "recycled plastic"),
            },
            title_attributes=("connectivity", "material"),
            price_ranges=((15, 40), (40, 100), (100, 250)),
            share=0.8,
        ),
        Category(
            name="water bottles",
            title_noun="Water Bottle",
            brand_pool="sport",
            attributes={
                "colour": ("black", "white", "blue", "green", "pink"),
                "capacity": ("500 ml", "750 ml", "1 L"),
                "insulation": ("insulated", "uninsulated"),
                "material": ("stainless steel", "aluminium", "glass", "BPA-free plastic", "recycled plastic"),
            },
            title_attributes=("insulation", "material"),
            price_ranges=((8, 18), (18, 35), (35, 60)),
            share=0.9,
        ),
        Category(
            name="yoga mats",
            title_noun="Yoga Mat",
            brand_pool="sport",
            attributes={
                "colour": ("purple", "black", "blue", "green", "grey"),
                "thickness": ("3 mm", "5 mm", "8 mm"),
                "grip": ("standard grip", "extra grip"),
                "material": ("PVC", "TPE", "natural rubber", "cork", "jute"),
            },
            title_attributes=("thickness", "material"),
            price_ranges=((12, 30), (30, 70), (70, 140)),
            share=0.7,
        ),
    ]
}

# fmt: off
ECO_MATERIALS = (
    "recycled mesh", "recycled polyester", "organic cotton", "merino wool", "recycled plastic", "bamboo",
    "canvas", "cork", "jute", "natural rubber",
)
# fmt: on


@dataclass(frozen=True)
class Segment:
    """A shopper segment: the attributes that drive its choices, strongest first, and its tastes."""

    share: float
    drivers: dict[str, float]  # attribute -> utility weight of matching the preferred value
    favoured_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    category_affinity: dict[str, float] = field(default_factory=dict)  # missing categories: 1.0
    age: tuple[float, float] = (35.0, 10.0)  # mean, standard deviation


SEGMENTS: dict[str, Segment] = {
    "budget": Segment(
        share=0.22,
        drivers={"price_band": 2.2, "brand": 0.5, "colour": 0.3},
        favoured_values={"price_band": ("budget",)},
        category_affinity={"t-shirts": 1.5, "water bottles": 1.3},
        age=(27, 8),
    ),
    "premium": Segment(
        share=0.14,
        drivers={"brand": 1.8, "price_band": 1.1, "material": 0.6},
        favoured_values={"price_band": ("premium",)},
        category_affinity={"headphones": 1.5, "coffee makers": 1.5, "rain jackets": 1.3},
        age=(45, 10),
    ),
    "eco": Segment(
        share=0.16,
        drivers={"material": 2.0, "price_band": 0.7, "brand": 0.3},
        favoured_values={"material": ECO_MATERIALS},
        category_affinity={"t-shirts": 2.0, "water bottles": 2.0, "yoga mats": 2.0, "backpacks": 1.3},
        age=(33, 9),
    ),
    "outdoor": Segment(
        share=0.18,
        drivers={"waterproofing": 2.0, "material": 0.9, "fit": 0.6, "brand": 0.4},
        favoured_values={"waterproofing": ("waterproof",)},
        category_affinity={"hiking boots": 3.0, "rain jackets": 3.0, "backpacks": 3.0, "water bottles": 1.5},
        age=(38, 11),
    ),
    "tech": Segment(
        share=0.16,
        drivers={"connectivity": 2.0, "brand": 1.0, "price_band": 0.4},
        favoured_values={"connectivity": ("bluetooth", "true wireless", "wifi")},
        category_affinity={"headphones": 4.0, "desk lamps": 3.0, "coffee makers": 2.5},
        age=(30, 8),
    ),
    "style": Segment(
        share=0.14,
        drivers={"colour": 1.9, "fit": 1.1, "brand": 0.6},
        category_affinity={"t-shirts": 3.0, "running shoes": 2.0, "rain jackets": 1.5},
        age=(28, 7),
    ),
}

FAVOURED_VALUE_PROB = 0.85
CATEGORY_CONCENTRATION = 0.4  # Dirichlet scale: small, so each shopper has a few favourite categories
POPULARITY_SIGMA = 1.2  # log-normal spread of latent item popularity: a few items draw many events
SEARCH_SESSION_SHARE = 0.3
SEARCH_MATCH_WEIGHT = 2.0
MEAN_SESSION_VIEWS = 4.0
MAX_SESSION_VIEWS = 30
VIEW_GAP_SECONDS = (45.0, 3.0, 600.0)  # exponential mean, clipped to [min, max]
# (intercept, slope on utility over the category average) of each funnel step's logistic probability.
FUNNEL = {"click": (-2.0, 0.6), "add_to_cart": (-1.9, 0.6), "purchase": (-1.7, 0.6)}
FUNNEL_DELAY_SECONDS = {"click": (2, 20), "add_to_cart": (5, 120), "purchase": (60, 900)}
PURCHASE_QUANTITY_PROBS = (0.86, 0.10, 0.04)  # 1, 2, 3 units
# Share of sessions starting in each hour of the day (UTC): quiet nights, lunch and evening peaks.
HOURLY_TRAFFIC = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.8, 4, 4.5, 4.2, 3.8, 3.6, 3.8, 4.2, 5, 6, 6.5, 5.5, 4, 2]
)
# How shoppers type a catalogue term when they do not use the catalogue's word: synonyms, spellings,
# what a value is for. A term without an entry is always typed as the catalogue writes it.
# fmt: off
SHOPPER_PHRASES: dict[str, tuple[str, ...]] = {
    # categories
    "hiking boots": ("trekking boots", "walking boots", "hikers"), "running shoes": ("sneakers", "trainers"),
    "rain jackets": ("raincoat", "shell jacket"), "backpacks": ("rucksack", "daypack"),
    "t-shirts": ("tee", "tshirt"), "headphones": ("earphones", "headset"),
    "coffee makers": ("coffee machine", "brewer"), "desk lamps": ("reading light", "table lamp"),
    "water bottles": ("flask", "drinks bottle"), "yoga mats": ("exercise mat", "pilates mat"),
    # price bands
    "budget": ("cheap", "affordable"), "mid-range": ("mid priced",), "premium": ("luxury", "high-end"),
    # colours
    "brown": ("chocolate",), "grey": ("gray", "charcoal"), "olive": ("khaki",), "tan": ("beige", "camel"),
    "red": ("crimson", "scarlet"), "neon yellow": ("hi-vis", "fluorescent"), "navy": ("dark blue",),
    "yellow": ("mustard",), "purple": ("violet", "lilac"), "pink": ("rose",), "silver": ("chrome",),
    "copper": ("bronze",), "brass": ("gold",),
    # fit, cut, waterproofing
    "wide": ("broad fit",), "narrow": ("slim fit",), "relaxed": ("loose",), "oversized": ("baggy",),
    "low": ("ankle",), "high": ("high-top",), "waterproof": ("rainproof", "watertight"),
    "water-resistant": ("showerproof", "splashproof"), "breathable": ("ventilated", "airy"),
    # materials
    "suede": ("nubuck",), "synthetic": ("vegan",), "recycled mesh": ("eco mesh",),
    "engineered mesh": ("mesh upper",), "knit": ("knitted",), "recycled polyester": ("eco polyester",),
    "gore-tex": ("goretex",), "cordura": ("ballistic nylon",), "organic cotton": ("eco cotton",),
    "merino wool": ("merino",), "aluminium": ("aluminum", "alloy"), "recycled plastic": ("eco plastic",),
    "stainless steel": ("inox",), "bpa-free plastic": ("tritan",), "pvc": ("vinyl",),
    "natural rubber": ("rubber",),
    # other attributes
    "packable hood": ("stowaway hood",), "hoodless": ("no hood",), "minimalist": ("barefoot", "zero drop"),
    "cushioned": ("padded",), "max-cushioned": ("plush", "maximal"), "road": ("pavement",),
    "trail": ("off-road",), "track": ("racing spikes",), "crew neck": ("crewneck", "round neck"),
    "v-neck": ("vneck",), "short sleeve": ("short sleeved",), "long sleeve": ("long sleeved",),
    "bluetooth": ("wireless",), "true wireless": ("earbuds",), "wired": ("corded",),
    "wifi": ("smart", "app controlled"), "manual": ("non-smart",), "noise-cancelling": ("anc",),
    "over-ear": ("around ear",), "in-ear": ("earbud",), "drip": ("filter",), "pod": ("capsule",),
    "french press": ("cafetiere", "plunger"), "pour-over": ("v60",), "warm white": ("soft light",),
    "cool white": ("daylight",), "adjustable white": ("dimmable",), "rgb": ("colour changing",),
    "insulated": ("thermos", "vacuum"), "uninsulated": ("single wall",), "3 mm": ("thin",),
    "8 mm": ("thick",), "extra grip": ("non slip",), "1 cup": ("single serve",), "12 cups": ("family size",),
    "15 l": ("15 litre",), "25 l": ("25 litre",), "35 l": ("35 litre",), "50 l": ("50 litre",),
    "1 l": ("1 litre",), "500 ml": ("half litre",),
}
# fmt: on
LABELLED_CATEGORY_ONLY = 20  # grade-1 items judged per query
LABELLED_OTHER_CATEGORY = 10  # grade-0 items judged per query
# fmt: off
OCCUPATIONS = (
    "engineer", "teacher", "nurse", "designer", "sales", "manager", "developer", "writer", "technician",
    "administrator", "artist", "scientist", "healthcare", "lawyer", "homemaker", "other",
)
# fmt: on

PRICE_BAND = "price_band"
BRAND = "brand"
# Every attribute a preference can be about, brand included, with its values: the code space below.
VOCABULARY: dict[str, tuple[str, ...]] = {
    BRAND: tuple(itertools.chain.from_iterable(BRAND_POOLS.values())),
    PRICE_BAND: PRICE_BANDS,
}
for _category in CATEGORIES.values():
    for _name, _values in _category.attributes.items():
        VOCABULARY[_name] = tuple(dict.fromkeys(VOCABULARY.get(_name, ()) + _values))
ATTRIBUTES = tuple(VOCABULARY)


@dataclass(frozen=True)
class SampleWorld:
    """The tables plus the latent tastes that produced them (for checking what jobs recover)."""

    tables: dict[str, pd.DataFrame]
    preferences: pd.DataFrame  # user_id, segment, category, attribute, value


@dataclass(frozen=True)
class _Catalogue:
    items: pd.DataFrame
    category: np.ndarray  # category index per item
    codes: np.ndarray  # item x ATTRIBUTES value index into VOCABULARY, -1 where the category lacks it
    log_popularity: np.ndarray


def generate_sample(cfg: SampleConfig) -> dict[str, pd.DataFrame]:
    """The sample lakehouse's input tables, keyed by table name, as the contracts in tables.py define them."""
    return simulate(cfg).tables


def simulate(cfg: SampleConfig) -> SampleWorld:
    """Run the generative story of the module docstring; one seeded generator makes every draw."""
    rng = np.random.default_rng(cfg.seed)
    catalogue = _catalogue(rng, cfg.n_items)
    users, segment = _users(rng, cfg.n_users)
    category_pref = _category_preferences(rng, segment)
    preferred = _preferred_values(rng, catalogue, segment)
    queries, query_spec = _queries(rng, cfg.n_queries)
    # Its own generator: how queries are phrased changes no other draw of the sample.
    queries["query_text"] = _phrased(
        np.random.default_rng([cfg.seed, 1]), query_spec, queries, cfg.shopper_phrasing
    )
    labels, query_matches = _query_labels(rng, catalogue, queries, query_spec)
    interactions = _interactions(
        rng, cfg, catalogue, users, segment, category_pref, preferred, queries, query_matches
    )
    tables = {
        "items": catalogue.items,
        "interactions": interactions,
        "users": users,
        "queries": queries,
        "query_labels": labels,
        "sample_truth": sample_truth(),
    }
    return SampleWorld(tables, _preferences_frame(users, segment, preferred))


def sample_truth() -> pd.DataFrame:
    """Each segment's driving attributes with their utility weight and rank (1 = matters most)."""
    rows = [
        (name, attribute, weight, rank)
        for name, seg in SEGMENTS.items()
        for rank, (attribute, weight) in enumerate(
            sorted(seg.drivers.items(), key=lambda kv: -kv[1]), start=1
        )
    ]
    return pd.DataFrame(rows, columns=["segment", "attribute", "weight", "rank"])


def _capitalise(value: str) -> str:
    """Title case for titles, but a unit after a number stays as written ("5 mm", "15 L").

    Not str.title(): that would write "5 Mm" and turn "BPA-free" into "Bpa-Free".
    """
    words = value.split(" ")
    return " ".join(
        word if i and words[i - 1][:1].isdigit() else word[:1].upper() + word[1:]
        for i, word in enumerate(words)
    )


def _describe(brand: str, model: str, category: Category, values: dict[str, str]) -> tuple[str, str]:
    """Title and description composed from the item's attributes, so its text carries them."""
    prefix = " ".join(_capitalise(values[a]) for a in category.title_attributes)
    title = f"{brand} {model} {prefix} {category.title_noun}, {_capitalise(values['colour'])}"
    facts = " ".join(f"{_capitalise(name.replace('_', ' '))}: {value}." for name, value in values.items())
    return title, f"{brand} {model} {category.title_noun.lower()}. {facts}"


def _catalogue(rng: np.random.Generator, n_items: int) -> _Catalogue:
    categories = list(CATEGORIES.values())
    shares = np.array([c.share for c in categories])
    # One item per category first, so no category is empty however small the catalogue.
    category = np.concatenate(
        [
            np.arange(len(categories)),
            rng.choice(len(categories), n_items - len(categories), p=shares / shares.sum()),
        ]
    )
    rng.shuffle(category)
    codes = np.full((n_items, len(ATTRIBUTES)), -1, dtype=np.int16)
    for c, spec in enumerate(categories):
        rows = np.flatnonzero(category == c)
        pool = BRAND_POOLS[spec.brand_pool]
        brand_share = np.arange(1, len(pool) + 1) ** -BRAND_ZIPF_EXPONENT
        brands = rng.permutation(len(pool))[
            rng.choice(len(pool), rows.size, p=brand_share / brand_share.sum())
        ]
        codes[rows, ATTRIBUTES.index(BRAND)] = [VOCABULARY[BRAND].index(pool[b]) for b in brands]
        codes[rows, ATTRIBUTES.index(PRICE_BAND)] = rng.choice(
            len(PRICE_BANDS), rows.size, p=PRICE_BAND_SHARES
        )
        for name, options in spec.attributes.items():
            codes[rows, ATTRIBUTES.index(name)] = [
                VOCABULARY[name].index(v) for v in rng.choice(options, rows.size)
            ]
    band = codes[:, ATTRIBUTES.index(PRICE_BAND)]
    low, high = (
        np.array([categories[c].price_ranges[b][end] for c, b in zip(category, band, strict=True)])
        for end in (0, 1)
    )
    price = np.floor(rng.uniform(low, high)) + 0.99
    models = rng.choice(MODEL_NAMES, n_items)
    records = []
    for i in range(n_items):
        spec = categories[category[i]]
        brand = VOCABULARY[BRAND][codes[i, ATTRIBUTES.index(BRAND)]]
        values = {a: VOCABULARY[a][codes[i, ATTRIBUTES.index(a)]] for a in spec.attributes}
        values[PRICE_BAND] = PRICE_BANDS[band[i]]
        title, description = _describe(brand, models[i], spec, values)
        records.append((f"I{i + 1:05d}", title, spec.name, brand, description, price[i], values))
    items = pd.DataFrame(
        records, columns=["item_id", "title", "category", "brand", "description", "price", "attributes"]
    )
    return _Catalogue(items, category, codes, rng.normal(0.0, POPULARITY_SIGMA, n_items))


def _users(rng: np.random.Generator, n_users: int) -> tuple[pd.DataFrame, np.ndarray]:
    segments = list(SEGMENTS.values())
    shares = np.array([s.share for s in segments])
    segment = rng.choice(len(segments), n_users, p=shares / shares.sum())
    mean, sd = (np.array([segments[s].age[k] for s in segment]) for k in (0, 1))
    age = np.clip(np.rint(rng.normal(mean, sd)), 18, 85).astype(int)
    occupation = rng.choice(np.array(OCCUPATIONS, dtype=object), n_users)
    occupation[(age < 24) & (rng.random(n_users) < 0.6)] = "student"
    occupation[age >= 66] = "retired"
    occupation[rng.random(n_users) < 0.04] = None  # not every shopper tells
    gender = rng.choice(np.array(["F", "M"], dtype=object), n_users)
    gender[rng.random(n_users) < 0.03] = None
    users = pd.DataFrame(
        {
            "user_id": [f"U{u + 1:05d}" for u in range(n_users)],
            "gender": gender,
            "age": age,
            "occupation": occupation,
            "segment": np.array(list(SEGMENTS))[segment],
        }
    )
    return users, segment


def _category_preferences(rng: np.random.Generator, segment: np.ndarray) -> np.ndarray:
    """user x category probabilities: a Dirichlet around the segment's affinities, so a few favourites."""
    affinity = np.array(
        [[seg.category_affinity.get(name, 1.0) for name in CATEGORIES] for seg in SEGMENTS.values()]
    )
    alpha = CATEGORY_CONCENTRATION * len(CATEGORIES) * affinity / affinity.sum(axis=1, keepdims=True)
    return np.vstack([rng.dirichlet(alpha[s]) for s in segment])


def _preferred_values(rng: np.random.Generator, catalogue: _Catalogue, segment: np.ndarray) -> np.ndarray:
    """user x category x attribute preferred value code, -1 where the attribute does not drive the user."""
    preferred = np.full((segment.size, len(CATEGORIES), len(ATTRIBUTES)), -1, dtype=np.int16)
    for s, seg in enumerate(SEGMENTS.values()):
        members = np.flatnonzero(segment == s)
        for c in range(len(CATEGORIES)):
            in_category = catalogue.codes[catalogue.category == c]
            for attribute in seg.drivers:
                a = ATTRIBUTES.index(attribute)
                present, counts = np.unique(in_category[:, a], return_counts=True)
                if present[0] < 0:  # the category has no such attribute
                    continue
                # Favourite brands follow brand popularity; other values are picked uniformly.
                weights = (
                    counts / counts.sum() if attribute == BRAND else np.full(present.size, 1 / present.size)
                )
                choice = present[rng.choice(present.size, members.size, p=weights)]
                wanted = [VOCABULARY[attribute].index(v) for v in seg.favoured_values.get(attribute, ())]
                favoured = present[np.isin(present, wanted)]
                if favoured.size:
                    take = rng.random(members.size) < FAVOURED_VALUE_PROB
                    choice[take] = rng.choice(favoured, take.sum())
                preferred[members, c, a] = choice
    return preferred


def _preferences_frame(users: pd.DataFrame, segment: np.ndarray, preferred: np.ndarray) -> pd.DataFrame:
    user, category, attribute = np.nonzero(preferred >= 0)
    names = list(CATEGORIES)
    return pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user],
            "segment": np.array(list(SEGMENTS))[segment[user]],
            "category": np.array(names)[category],
            "attribute": np.array(ATTRIBUTES)[attribute],
            "value": [
                VOCABULARY[ATTRIBUTES[a]][preferred[u, c, a]]
                for u, c, a in zip(user, category, attribute, strict=True)
            ],
        }
    )


def _query_specs() -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every query the schema can form: (category, ((attribute, value), ...), draw weight)."""
    specs: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
    total_share = sum(c.share for c in CATEGORIES.values())
    for category in CATEGORIES.values():
        attributes = [(PRICE_BAND, PRICE_BANDS), *category.attributes.items()]
        singles = [((a, v),) for a, values in attributes for v in values]
        pairs = [
            ((a, v), (b, w))
            for (a, values), (b, others) in itertools.combinations(attributes, 2)
            for v in values
            for w in others
        ]
        share = category.share / total_share
        # Shoppers type one-value and two-value queries about equally often.
        specs += [(category.name, spec, 0.5 * share / len(singles)) for spec in singles]
        specs += [(category.name, spec, 0.5 * share / len(pairs)) for spec in pairs]
    return specs


def _queries(rng: np.random.Generator, n_queries: int) -> tuple[pd.DataFrame, list]:
    specs = _query_specs()
    if n_queries > len(specs):
        raise ValueError(
            f"sample.n_queries={n_queries} exceeds the {len(specs)} distinct queries the sample's attribute "
            f"schemas can form; set sample.n_queries to at most {len(specs)}"
        )
    weights = np.array([w for _, _, w in specs])
    chosen = [specs[i] for i in rng.choice(len(specs), n_queries, replace=False, p=weights / weights.sum())]
    queries = pd.DataFrame(
        {
            "query_id": [f"Q{q + 1:04d}" for q in range(n_queries)],
            "query_text": [" ".join(v.lower() for _, v in spec) + " " + name for name, spec, _ in chosen],
            "query_class": [name for name, _, _ in chosen],
        }
    )
    return queries, [spec for _, spec, _ in chosen]


def _phrased(rng: np.random.Generator, query_spec: list, queries: pd.DataFrame, share: float) -> list[str]:
    """Each query's text with each of its terms (values, then the category) typed in a shopper's words
    (`SHOPPER_PHRASES`) with probability `share`, else in the catalogue's."""

    def typed(term: str) -> str:
        phrases = SHOPPER_PHRASES.get(term, ())
        return str(rng.choice(phrases)) if phrases and rng.random() < share else term

    return [
        " ".join(typed(value.lower()) for _, value in spec) + " " + typed(category)
        for spec, category in zip(query_spec, queries["query_class"], strict=True)
    ]


def _query_labels(
    rng: np.random.Generator, catalogue: _Catalogue, queries: pd.DataFrame, query_spec: list
) -> tuple[pd.DataFrame, np.ndarray]:
    """Graded judgements per query, and the query x item count of query values each item matches."""
    names = list(CATEGORIES)
    matches = np.zeros((len(queries), len(catalogue.category)), dtype=np.int8)
    frames = []
    for q, (query_id, category, spec) in enumerate(
        zip(queries["query_id"], queries["query_class"], query_spec, strict=True)
    ):
        in_category = catalogue.category == names.index(category)
        for attribute, value in spec:
            matches[q] += in_category & (
                catalogue.codes[:, ATTRIBUTES.index(attribute)] == VOCABULARY[attribute].index(value)
            )
        grade = np.where(in_category, 1 + (matches[q] > 0) + (matches[q] == len(spec)), 0)
        category_only = np.flatnonzero(grade == 1)
        others = np.flatnonzero(grade == 0)
        judged = np.concatenate(
            [
                np.flatnonzero(grade >= 2),
                rng.choice(category_only, min(LABELLED_CATEGORY_ONLY, category_only.size), replace=False),
                rng.choice(others, min(LABELLED_OTHER_CATEGORY, others.size), replace=False),
            ]
        )
        frames.append(
            pd.DataFrame(
                {
                    "query_id": query_id,
                    "item_id": catalogue.items["item_id"].to_numpy()[judged],
                    "relevance": grade[judged],
                }
            )
        )
    labels = pd.concat(frames, ignore_index=True).sort_values(["query_id", "item_id"], ignore_index=True)
    return labels, matches


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class _Sessions:
    user: np.ndarray
    category: np.ndarray
    query: np.ndarray  # query index of search sessions, -1 for browsing
    views: np.ndarray  # number of item views

    @property
    def first_view(self) -> np.ndarray:
        """Index of each session's first view in the flat, session-ordered view arrays."""
        return np.concatenate([[0], np.cumsum(self.views)[:-1]])


def _sessions(
    rng: np.random.Generator, cfg: SampleConfig, category_pref: np.ndarray, query_category: np.ndarray
) -> _Sessions:
    """Enough sessions for n_events views: every user gets one, the rest follow a log-normal activity.

    Views alone reach n_events whatever the funnel does; surplus sessions are cut off once the events
    are counted.
    """
    n_users: int = category_pref.shape[0]
    views = np.minimum(rng.geometric(1 / MEAN_SESSION_VIEWS, cfg.n_events), MAX_SESSION_VIEWS)
    n_sessions = max(n_users, int(np.searchsorted(np.cumsum(views), cfg.n_events)) + 1)
    activity = rng.lognormal(0.0, 1.0, n_users)
    user = np.concatenate(
        [rng.permutation(n_users), rng.choice(n_users, n_sessions - n_users, p=activity / activity.sum())]
    )
    cumulative = np.cumsum(category_pref, axis=1)
    # Inverse-CDF draw of each session's category from its user's preferences (min: float round-off).
    category = np.minimum((cumulative[user] < rng.random((n_sessions, 1))).sum(axis=1), len(CATEGORIES) - 1)
    query = np.full(n_sessions, -1)
    searching = rng.random(n_sessions) < SEARCH_SESSION_SHARE
    for c in range(len(CATEGORIES)):
        options = np.flatnonzero(query_category == c)
        starts = np.flatnonzero(searching & (category == c))
        if options.size:
            query[starts] = rng.choice(options, starts.size)
    return _Sessions(user, category, query, views[:n_sessions])


def _utility(catalogue: _Catalogue, preferred: np.ndarray, weights: np.ndarray, c: int) -> np.ndarray:
    """user x item utility within category c: log popularity + weighted matches of preferred values."""
    items = catalogue.category == c
    utility = np.tile(catalogue.log_popularity[items], (preferred.shape[0], 1))
    for a in np.flatnonzero((catalogue.codes[items] >= 0).all(axis=0)):
        utility += weights[:, a][:, None] * (
            preferred[:, c, a][:, None] == catalogue.codes[items, a][None, :]
        )
    return utility


def _views(
    rng: np.random.Generator,
    sessions: _Sessions,
    catalogue: _Catalogue,
    preferred: np.ndarray,
    weights: np.ndarray,
    query_matches: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The item of every view, and its utility over the user's category average (what drives the funnel)."""
    view_session = np.repeat(np.arange(sessions.views.size), sessions.views)
    view_user = sessions.user[view_session]
    view_query = sessions.query[view_session]
    view_category = sessions.category[view_session]
    view_item = np.empty(view_session.size, dtype=np.int64)
    view_lift = np.empty(view_session.size)
    # A zero row, picked by query index -1, so browsing sessions get no search bonus.
    search_bonus = SEARCH_MATCH_WEIGHT * np.vstack([query_matches, np.zeros((1, query_matches.shape[1]))])
    for c in range(len(CATEGORIES)):
        items = np.flatnonzero(catalogue.category == c)
        utility = _utility(catalogue, preferred, weights, c)
        views = np.flatnonzero(view_category == c)
        users = view_user[views]
        scores = utility[users] + search_bonus[view_query[views][:, None], items[None, :]]
        # Gumbel-max: the argmax of scores plus Gumbel noise is a draw from the softmax over the scores.
        pick = np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)
        view_item[views] = items[pick]
        view_lift[views] = utility[users, pick] - utility.mean(axis=1)[users]
    return view_item, view_lift


def _funnel(rng: np.random.Generator, lift: np.ndarray) -> dict[str, np.ndarray]:
    """Which views went on to each funnel step: each needs the one before, likelier for higher utility."""
    reached = {"view": np.ones(lift.size, dtype=bool)}
    previous = reached["view"]
    for step, (intercept, slope) in FUNNEL.items():
        previous = reached[step] = previous & (rng.random(lift.size) < _sigmoid(intercept + slope * lift))
    return reached


def _event_seconds(rng: np.random.Generator, sessions: _Sessions, days: int) -> dict[str, np.ndarray]:
    """Seconds since the start of the log of each view and of each funnel step it may lead to.

    Views within a session follow each other, each funnel step follows its predecessor, and sessions start
    on a random day at an hour drawn from the daily traffic curve.
    """
    first_view = sessions.first_view
    gap_mean, gap_min, gap_max = VIEW_GAP_SECONDS
    gaps = np.clip(rng.exponential(gap_mean, sessions.views.sum()), gap_min, gap_max)
    gaps[first_view] = 0.0
    elapsed = np.cumsum(gaps)
    offset = {"view": elapsed - np.repeat(elapsed[first_view], sessions.views)}
    previous = offset["view"]
    for step, (low, high) in FUNNEL_DELAY_SECONDS.items():
        previous = offset[step] = previous + rng.uniform(low, high, previous.size)

    n_sessions = sessions.views.size
    hour = rng.choice(24, n_sessions, p=HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum())
    start = (rng.integers(0, days, n_sessions) * 24 + hour) * 3600.0 + rng.uniform(0, 3600, n_sessions)
    # A session that would run past the end of the log happens the day before instead.
    start[start + np.maximum.reduceat(previous, first_view) >= days * 86400.0] -= 86400.0
    return {step: np.repeat(start, sessions.views) + seconds for step, seconds in offset.items()}


def _interactions(
    rng: np.random.Generator,
    cfg: SampleConfig,
    catalogue: _Catalogue,
    users: pd.DataFrame,
    segment: np.ndarray,
    category_pref: np.ndarray,
    preferred: np.ndarray,
    queries: pd.DataFrame,
    query_matches: np.ndarray,
) -> pd.DataFrame:
    query_category = queries["query_class"].map({name: c for c, name in enumerate(CATEGORIES)}).to_numpy()
    sessions = _sessions(rng, cfg, category_pref, query_category)
    weights = np.array([[seg.drivers.get(a, 0.0) for a in ATTRIBUTES] for seg in SEGMENTS.values()])[segment]
    view_item, view_lift = _views(rng, sessions, catalogue, preferred, weights, query_matches)
    reached = _funnel(rng, view_lift)
    seconds = _event_seconds(rng, sessions, cfg.days)
    quantity = rng.choice(
        np.arange(1, len(PURCHASE_QUANTITY_PROBS) + 1), view_item.size, p=PURCHASE_QUANTITY_PROBS
    )

    # Keep the sessions needed to reach n_events events; the rest were drawn only as a reserve.
    events_per_session = np.add.reduceat(sum(r.astype(int) for r in reached.values()), sessions.first_view)
    view_session = np.repeat(np.arange(sessions.views.size), sessions.views)
    kept = view_session <= np.searchsorted(np.cumsum(events_per_session), cfg.n_events)

    window_start = END_OF_LOG - pd.Timedelta(days=cfg.days)
    query_ids = np.append(queries["query_id"].to_numpy(dtype=object), np.array([None]))  # index -1: no query
    frames = []
    for step, happened in reached.items():
        rows = np.flatnonzero(happened & kept)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": users["user_id"].to_numpy()[sessions.user[view_session[rows]]],
                    "item_id": catalogue.items["item_id"].to_numpy()[view_item[rows]],
                    "event_type": step,
                    "event_ts": window_start + pd.to_timedelta(np.round(seconds[step][rows], 3), unit="s"),
                    "value": quantity[rows].astype(float) if step == "purchase" else np.nan,
                    "query_id": query_ids[sessions.query[view_session[rows]]],
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["event_ts", "user_id"], ignore_index=True)
