"""The candidate sources: the one list of their names, in union order, with each one's default
cap (candidates per query). Torch- and faiss-free, so every process can read it.

Everything else follows from this list: services/retrieval/sources/<name>.py implements each
source (loaded by name, in this order: an item two sources propose stays with the earlier
one), `shared.contracts.Source` accepts exactly these names on the wire (the OpenAPI documents
list them), and `Settings.candidate_caps` starts from these caps (VIDREC_CANDIDATE_CAPS, or
VIDREC_CANDIDATES_<NAME> for one source, changes them), `Settings.ranker_caps` from
RANKER_CAPS (VIDREC_RANKER_CAPS).

Adding a source: its module in services/retrieval/sources/, one line in each list here, its
test. The
candidate ranker's source features are those of the sources it was trained with
(shared/ranker_features.SOURCES, part of the model's input layout): a new source reaches a
ranker trained before it as an unknown source, until a bundle is built with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

# Most candidates one source may propose per query (faiss GPU answers at most 2048 neighbours).
MAX_CANDIDATES_PER_SOURCE = 2000

DEFAULT_CAPS = MappingProxyType({
    "ann": 300,       # the user's learned vector against the item vectors (watched alike)
    "cooc": 100,      # what other people watched right after the user's newest items
    "content": 100,   # the recent history's content (title and tags) against the items'
    "tags": 50,       # the tags the request or the user's profile asks for
    "popular": 50,    # the bundle's popularity order (what a new user gets)
})
SOURCE_NAMES: tuple[str, ...] = tuple(DEFAULT_CAPS)

# What the candidate ranker is given for a user with a history: the head of each source's
# list. Every candidate costs the request its explanation, its transfer, its features and its
# model run; past this budget the ranker's NDCG gains little (bench/results/candidate_budget.json:
# quality against cost per request for each budget, on MicroLens-50k). The content source is
# off here: its exact search over 384 dimensions was 40% of retrieval's time, and the ranker's
# NDCG@10 did not move without its candidates (its content features stay). Popular's 5 found
# nothing the others did not, and ANN's 81st-100th and cooc's 41st-50th moved neither NDCG@10
# nor HR@10 (HR@50 -1.2%) for 17% less of the two stages' CPU
# (bench/results/candidate_budget_trim.json). A user without a history, and a request with tag
# filters, still get DEFAULT_CAPS.
RANKER_CAPS = MappingProxyType({"ann": 80, "cooc": 40, "content": 0, "tags": 15,
                                "popular": 0})


def ranked_caps(candidate_caps: Mapping[str, int],
                ranker_caps: Mapping[str, int]) -> dict[str, int]:
    """Per source, what a candidate ranker is given: its budget within the configured caps (a
    source switched off by candidate_caps, by an experiment arm say, stays off)."""
    return {name: min(cap, ranker_caps.get(name, 0)) for name, cap in candidate_caps.items()}


def unknown_sources(names: Iterable[str]) -> list[str]:
    """The names among `names` that are not candidate sources, sorted."""
    return sorted(n for n in names if n not in DEFAULT_CAPS)


def listed() -> str:
    """The sources for a message: 'ann, cooc, content, tags, popular'."""
    return ", ".join(SOURCE_NAMES)
