"""Tag profile math: how much an event adds to each of its item's tags, and how weights decay.

A weight decays with half-life H: worth w at time t, it is worth w * 2^(-(now - t) / H) at now.
Redis stores each user's weights relative to a reference time `ref` (the `tagref` key):
the weight at `now` is stored * 2^(-(now - ref) / H). So an event at time t adds
inc * 2^((t - ref) / H) to each of its tags: O(tags of the item), no rewrite of the whole
profile, and out-of-order events land with their correctly decayed worth. When t runs more
than REBASE_HALF_LIVES half-lives past ref the stored numbers would grow without bound, so the
script rewrites the profile relative to t (and drops weights that decayed below PRUNE_BELOW).
"""

from __future__ import annotations

from collections.abc import Iterable

# What one event is worth to each tag of its item. A skip is a weak negative signal: it adds
# nothing (the item still enters the seen set, so it is not recommended again). A dislike is a
# strong one: it takes off as much as a like adds, so a tag can go below zero (and is then
# never asked of the tag source, retrieve.py).
COMPLETE_WEIGHT = 3.0
LIKE_WEIGHT = 2.0
DISLIKE_WEIGHT = -LIKE_WEIGHT
VIEW_BASE, VIEW_PER_FRACTION = 0.5, 0.5  # a view is worth 0.5 .. 1.0 by watch fraction
IMPORT_WEIGHT = 1.0  # each interaction in a bundle's users.json (`vidrec load`)

REBASE_HALF_LIVES = 16.0
PRUNE_BELOW = 1e-4


def event_weight(type_: str, watch_fraction: float) -> float:
    if type_ == "complete":
        return COMPLETE_WEIGHT
    if type_ == "like":
        return LIKE_WEIGHT
    if type_ == "view":
        return VIEW_BASE + VIEW_PER_FRACTION * watch_fraction
    if type_ == "dislike":
        return DISLIKE_WEIGHT
    return 0.0  # skip


def enters_history(type_: str) -> bool:
    """History is the ranker's input, a sequence of positive interactions; skips and dislikes
    stay out."""
    return type_ not in ("skip", "dislike")


def decay_factor(ref: float, now: float, half_life_s: float) -> float:
    return 2.0 ** (-(now - ref) / half_life_s)


def decayed(stored: dict[str, str], ref: float | None, now: float,
            half_life_s: float) -> dict[str, float]:
    """The profile as of `now` from the raw HGETALL and tagref."""
    factor = 1.0 if ref is None else decay_factor(ref, now, half_life_s)
    return {tag: float(w) * factor for tag, w in stored.items()}


def import_profile(tag_lists: Iterable[list[str]]) -> dict[str, float]:
    """The profile of an imported sequence (no timestamps: each interaction counts alike)."""
    profile: dict[str, float] = {}
    for tags in tag_lists:
        for tag in set(tags):
            profile[tag] = profile.get(tag, 0.0) + IMPORT_WEIGHT
    return profile


# One event, applied atomically; all KEYS share the user's hash tag (one cluster slot).
# KEYS: dedupe, hist, seen, tags, tagref
# ARGV: dedupe_ttl_s, history entry ("" = none), history_cap, item_id, weight, t, half_life_s,
#       tag...
# Returns false for a new event (the marker is now "pending" until the stream append is
# confirmed), else the marker's value: "pending" (applied, stream append not confirmed) or
# "done".
RECORD_EVENT_LUA = f"""
local state = redis.call('GET', KEYS[1])
if state then return state end
redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
end
redis.call('SADD', KEYS[3], ARGV[4])
local weight = tonumber(ARGV[5])
if weight == 0 or #ARGV < 8 then return false end
local t = tonumber(ARGV[6])
local half_life = tonumber(ARGV[7])
local ref = tonumber(redis.call('GET', KEYS[5]))
if not ref then
  ref = t
  redis.call('SET', KEYS[5], ARGV[6])
end
local e = (t - ref) / half_life
if e > {REBASE_HALF_LIVES} then
  local scale = 2 ^ (-e)
  local flat = redis.call('HGETALL', KEYS[4])
  for i = 1, #flat, 2 do
    local w = tonumber(flat[i + 1]) * scale
    if math.abs(w) < {PRUNE_BELOW} then
      redis.call('HDEL', KEYS[4], flat[i])
    else
      redis.call('HSET', KEYS[4], flat[i], string.format('%.17g', w))
    end
  end
  redis.call('SET', KEYS[5], ARGV[6])
  e = 0
end
local inc = weight * 2 ^ e
if math.abs(inc) < {PRUNE_BELOW} then return false end
inc = string.format('%.17g', inc)
for i = 8, #ARGV do
  redis.call('HINCRBYFLOAT', KEYS[4], ARGV[i], inc)
end
return false
"""
