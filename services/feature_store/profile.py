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

from collections.abc import Iterable, Sequence

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
    return float(2.0 ** (-(now - ref) / half_life_s))


def decayed(stored: dict[str, str], ref: float | None, now: float,
            half_life_s: float) -> dict[str, float]:
    """The profile as of `now` from the raw HGETALL and tagref."""
    factor = 1.0 if ref is None else decay_factor(ref, now, half_life_s)
    return {tag: float(w) * factor for tag, w in stored.items()}


def import_profile(tag_lists: Iterable[Sequence[str]]) -> dict[str, float]:
    """The profile of an imported sequence (no timestamps: each interaction counts alike)."""
    profile: dict[str, float] = {}
    for tags in tag_lists:
        for tag in set(tags):
            profile[tag] = profile.get(tag, 0.0) + IMPORT_WEIGHT
    return profile


# The state change of one new event, shared by both scripts (a Lua function). `refs` caches
# each tagref read or written during one script run (a batch often holds one user many times).
_APPLY_LUA = f"""
local function apply(k_hist, k_seen, k_tags, k_ref, entry, cap, item, weight, t_arg,
                     half_life, tags, refs)
  if entry ~= '' and redis.call('RPUSH', k_hist, entry) > cap then
    redis.call('LTRIM', k_hist, -cap, -1)
  end
  redis.call('SADD', k_seen, item)
  if weight == 0 or #tags == 0 then return end
  local t = tonumber(t_arg)
  local ref = refs[k_ref]
  if ref == nil then
    ref = tonumber(redis.call('GET', k_ref))
    if not ref then
      ref = t
      redis.call('SET', k_ref, t_arg)
    end
    refs[k_ref] = ref
  end
  local e = (t - ref) / half_life
  if e > {REBASE_HALF_LIVES} then
    local scale = 2 ^ (-e)
    local flat = redis.call('HGETALL', k_tags)
    for i = 1, #flat, 2 do
      local w = tonumber(flat[i + 1]) * scale
      if math.abs(w) < {PRUNE_BELOW} then
        redis.call('HDEL', k_tags, flat[i])
      else
        redis.call('HSET', k_tags, flat[i], string.format('%.17g', w))
      end
    end
    redis.call('SET', k_ref, t_arg)
    refs[k_ref] = t
    e = 0
  end
  local inc = weight * 2 ^ e
  if math.abs(inc) < {PRUNE_BELOW} then return end
  inc = string.format('%.17g', inc)
  for _, tag in ipairs(tags) do
    redis.call('HINCRBYFLOAT', k_tags, tag, inc)
  end
end
"""

# One event, applied atomically; all KEYS share the user's hash tag (one cluster slot).
# KEYS: dedupe, hist, seen, tags, tagref
# ARGV: dedupe_ttl_s, history entry ("" = none), history_cap, item_id, weight, t, half_life_s,
#       tag...
# Returns false for a new event (the marker is now "pending" until the stream append is
# confirmed), else the marker's value: "pending" (applied, stream append not confirmed) or
# "done".
RECORD_EVENT_LUA = _APPLY_LUA + """
local state = redis.call('SET', KEYS[1], 'pending', 'NX', 'GET', 'EX', ARGV[1])
if state then return state end
local tags = {}
for i = 8, #ARGV do tags[#tags + 1] = ARGV[i] end
apply(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], tonumber(ARGV[3]), ARGV[4],
      tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), tags, {})
return false
"""

# A batch of events in one call (services/feature_store/batch.py). KEYS: 5 per event as above,
# then the stream when ARGV[1] == '1' (a single Redis: the batch's one stream entry is written
# by the script, and its events' markers become "done" in the same run; on a cluster the
# stream lives in another slot and the caller appends it, as for the single-event script).
# ARGV: stream?, dedupe_ttl_s, history_cap, half_life_s, stream_maxlen,
#       the events as one JSON array of [entry, item_id, weight, t, [tag, ...]] (the order of
#       KEYS), and (with the stream) the entry's "events" value (codec.pack_stream_events of
#       the same events, in the same order).
# Returns per event "" (new) or the marker's previous value ("pending" or "done"); with the
# stream, a "pending" replay goes into the entry now and becomes "done" too. The entry lists
# the positions of events that were "done" already ("skip": not in the entry) and of "pending"
# replays ("replayed": an older entry written outside a script may hold them too).
RECORD_BATCH_LUA = _APPLY_LUA + """
local with_stream = ARGV[1] == '1'
local ttl, cap, half_life, maxlen = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local events = cjson.decode(ARGV[6])
local out, queued, skip, replayed, refs = {}, {}, {}, {}, {}
for i, ev in ipairs(events) do
  local k = 5 * (i - 1)
  local state = redis.call('SET', KEYS[k + 1], 'pending', 'NX', 'GET', 'EX', ttl)
  if state then
    out[i] = state
  else
    out[i] = ''
    apply(KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], ev[1], cap, ev[2], ev[3], ev[4],
          half_life, ev[5], refs)
  end
  if state == 'done' then
    skip[#skip + 1] = i - 1
  else
    queued[#queued + 1] = KEYS[k + 1]
    if state then replayed[#replayed + 1] = i - 1 end
  end
end
-- every state first, then the stream: an XADD that fails stops here and leaves the markers
-- "pending", which the caller's retry appends (the same contract as the per-event script)
if with_stream and #queued > 0 then
  local fields = {'events', ARGV[7], 'once', '1'}
  if #skip > 0 then
    fields[#fields + 1] = 'skip'
    fields[#fields + 1] = table.concat(skip, ',')
  end
  if #replayed > 0 then
    fields[#fields + 1] = 'replayed'
    fields[#fields + 1] = table.concat(replayed, ',')
  end
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  for _, key in ipairs(queued) do redis.call('SET', key, 'done', 'XX', 'KEEPTTL') end
end
return out
"""
