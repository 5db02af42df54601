-- dispatch.lua: every command of one pool, run atomically inside Redis.
--
-- This is `switchboard_core::engine::PoolState` translated to Lua, method by
-- method, so the Redis store behaves as the in-memory one does. It is a Redis
-- function library (Redis 7+): src/script.rs loads it with FUNCTION LOAD
-- under a name carrying the source's hash, and calls it as
--
--   FCALL sb_dispatch_<hash> 1 <prefix> <command> <pool> <clock> <contact offset ms> <settings...> <paused> <args...>
--
-- The last setting says whether the reply carries the events the call
-- committed (`1`) or only its value (`0`, for a caller that takes every
-- event from the stream, as the server does through its feed).
--
-- A library, not EVALSHA: an EVAL script runs its whole body on every call,
-- and defining this file's ~150 functions cost ~65 µs per call before any
-- work was done; a library defines them once, at load.
--
-- where <prefix> is `sb:{pool}:`. Every key the script touches starts with
-- that prefix, so all of them share the `{pool}` hash tag and the slot of
-- KEYS[1]: the script is legal on Redis Cluster even though most keys are
-- computed here (which agent gets an offer is decided inside the script, so
-- the keys cannot all be declared in advance). The key layout is documented
-- in src/keys.rs.
--
-- Rows (agents, conversations) are MessagePack (cmsgpack; rows an older
-- build wrote as JSON are read too, see `decode_row`), cached in Lua tables
-- for the duration of the script and written back once at the end
-- (`flush`). Replies are JSON built by hand in the shapes serde gives the
-- core types, because cjson cannot tell an empty array from an empty object
-- and prints numbers with 14 significant digits; the hand-off itself is kept
-- as the exact serde JSON the Rust side sent and is never re-encoded (a
-- transfer to a queue splices new `category`, `required_skills` and
-- `language` values into it, leaving every other byte as it was).
--
-- Time is Redis's own (TIME). <clock> is `0` in production; tests pass an
-- offset added to TIME, or `=<ms>` for a pinned time. <contact offset> is `0`
-- in production; a test simulating an outage passes the outage's length (it
-- is added to TIME when measuring the gap since the pool was last reached).

-- Per-call state. Redis runs this file once, when it loads the library
-- (FUNCTION LOAD): the helpers below are defined once, not on every call.
-- Every call starts with `begin`, which sets these from the call's keys and
-- arguments and empties the row caches, so nothing leaks between calls.
local K, ARGV, command, pool, settings, now, contact_now
local K_ROSTER, K_AGENTS, K_ONLINE, K_DEADLINES, K_EVENTS, K_GROUPS, K_ARRIVALS
local K_STREAM_IDS, K_FIRST_OFFERS, K_RATE_GROUPS, K_LAST_CONTACT, K_OFFER_SEQ
local K_PLAN_GENERATIONS, K_DELIVERY_PAUSED, K_DEFUSED
-- Whether the pool's delivery checks are paused by another replica, once
-- this call has looked (nil: not yet; see `delivery_checks_paused`).
local pool_delivery_paused
-- Rows (agents, conversations, roster entries) read during this call, and
-- which of them changed; written back once, at the end (`flush`).
local agents, conversations, rosters, dirty_agents, dirty_conversations
-- The events this call commits, as JSON.
local events
-- Agents whose place in the offerable index changed during this call
-- (`reindex`), and where each was in Redis before (its score, or false):
-- the index is written once per agent, when something reads it or at the
-- end (`sync_index`), not at every intermediate state. An accept, for
-- instance, frees the agent's offer slot (offerable for a moment) and then
-- fills its capacity: written eagerly, that was 8 ZADD and 8 ZREM of the
-- same entries for nothing.
local index_pending
local sync_index
-- How many times each conversation was touched during this call, and its
-- last rendering (no queue position) with the count it was made at: the
-- event and the reply of a command usually render the same state, so the
-- second is the first's string (see `render_conversation`).
local conversation_changes, rendered_conversations
-- Which agents have a roster entry, as far as this call asked (`in_roster`).
local roster_listed
-- Integers this call formatted (see `ji`), and the pool as JSON.
local int_texts, pool_json
-- The JSON of 0 to 1023 (see `ji`).
local SMALL_INTS = {}
local pool_json_for = nil

local FIRST_ARG = 17
-- The running command's arguments: ARGV[arg_base + 1 .. arg_base + arg_count]
-- (a batch, see `run_batch`, gives each of its commands its own window).
local arg_base, arg_count = FIRST_ARG, 0
local function arg(i)
  if i > arg_count then return nil end
  return ARGV[arg_base + i]
end

-- The key names and settings of the previous call, kept between calls (the
-- library's state outlives a call): most calls name the same pool with the
-- same settings, and building them anew cost a few µs per call.
local names_for, settings_from = nil, {}
-- Per pool (key prefix): when this library last saw it reached, and last
-- wrote that to `last_contact` (Redis's clock; see
-- `extend_leases_after_outage`).
local contact_seen, contact_written = {}, {}
-- `now` as Redis takes it (an integer string, see `deadline_at`) and the
-- stream cap as the Rust side sent it.
local now_text, stream_max_len_text

local function begin(keys, args)
  K = keys[1]
  ARGV = args
  command = ARGV[1]
  pool = ARGV[2]
  arg_base, arg_count = FIRST_ARG, #ARGV - FIRST_ARG
  local same_settings = settings ~= nil
  for i = 5, 16 do
    if settings_from[i] ~= ARGV[i] then same_settings = false break end
  end
  if not same_settings then
    settings = {
      offer_timeout = tonumber(ARGV[5]),
      delivery_grace = tonumber(ARGV[6]),
      lease = tonumber(ARGV[7]),
      max_wait = tonumber(ARGV[8]),
      misses_before_away = tonumber(ARGV[9]),
      retention = tonumber(ARGV[10]),
      wrap_up = tonumber(ARGV[11]),
      outage_threshold = tonumber(ARGV[12]),
      stream_max_len = tonumber(ARGV[13]),
      sweep_limit = tonumber(ARGV[14]),
      -- `json` while builds before MessagePack rows still run (see
      -- `encode_row`), else `msgpack`.
      json_rows = ARGV[15] == 'json',
      -- Whether the reply repeats the events (see the top of this file).
      events_in_reply = ARGV[16] ~= '0',
    }
    for i = 5, 16 do settings_from[i] = ARGV[i] end
  end
  stream_max_len_text = ARGV[13]
  -- This replica runs behind: give undelivered offers another grace
  -- period rather than withdraw them (Store::pause_delivery_checks). Per
  -- call, not kept with the settings; the pool-wide pause it leaves for
  -- the other replicas is `delivery_paused` (see `delivery_checks_paused`).
  settings.delivery_checks_paused = ARGV[17] == '1'
  pool_delivery_paused = nil
  local time = redis.call('TIME')
  local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  if string.sub(ARGV[3], 1, 1) == '=' then
    now = tonumber(string.sub(ARGV[3], 2))
  else
    now = redis_now + tonumber(ARGV[3])
  end
  now_text = string.format('%d', now)
  -- When the pool was reached, on Redis's own clock (never a pinned one).
  contact_now = redis_now + tonumber(ARGV[4])
  if names_for ~= K then
    K_ROSTER = K .. 'roster'
    K_AGENTS = K .. 'agents'
    K_ONLINE = K .. 'online'
    K_DEADLINES = K .. 'deadlines'
    K_DEFUSED = K .. 'deadlines_defused'
    K_EVENTS = K .. 'events'
    K_GROUPS = K .. 'groups'
    K_ARRIVALS = K .. 'arrivals'
    K_STREAM_IDS = K .. 'stream_ids'
    K_FIRST_OFFERS = K .. 'first_offers'
    K_RATE_GROUPS = K .. 'rate_groups'
    K_LAST_CONTACT = K .. 'last_contact'
    K_OFFER_SEQ = K .. 'offer_seq'
    K_PLAN_GENERATIONS = K .. 'plan_generations'
    K_DELIVERY_PAUSED = K .. 'delivery_paused'
    names_for = K
  end
  agents, conversations, rosters = {}, {}, {}
  dirty_agents, dirty_conversations = {}, {}
  events = {}
  index_pending = {}
  conversation_changes, rendered_conversations = {}, {}
  roster_listed = {}
  int_texts = {}
  if SMALL_INTS[0] == nil then
    for i = 0, 1023 do SMALL_INTS[i] = string.format('%d', i) end
  end
  if pool_json_for ~= pool then
    pool_json = cjson.encode(pool)
    pool_json_for = pool
  end
end

-- How many recent first offers the wait estimate looks at (engine RATE_WINDOW).
local RATE_WINDOW = 64
local RATE_WINDOW_START = '-64'
-- A group's own rate is used once it has this many (engine MIN_GROUP_SAMPLES).
local MIN_GROUP_SAMPLES = 4
-- At most this many groups keep their own rate window (engine MAX_RATE_GROUPS).
local MAX_RATE_GROUPS = 10000
-- How many index entries one ZRANGE fetches while looking for a fit: the
-- first fetch is small (the longest-idle agent usually fits), the next ones
-- grow to SCAN_CHUNK.
local SCAN_CHUNK = 32
local SCAN_CHUNK_TEXT = '32'
local FIRST_CHUNK = 4
-- Strategies other than longest idle compare at most this many eligible
-- agents per language key (engine STRATEGY_CANDIDATES).
local STRATEGY_CANDIDATES = 64
-- Micro-points per priority point (plan::MICRO).
local MICRO = 1000000
-- A planned conversation's maximum wait with no `Expire` reason of its own.
local MAX_WAIT_REASON = 'no agent within the maximum wait'

-- ------------------------------------------------------------------ keys

local function k_agent(id) return K .. 'agent:' .. id end
local function k_conv(id) return K .. 'conv:' .. id end
local function k_avail(language, skill) return K .. 'avail:' .. language .. ':' .. skill end
local function k_group_language(primary) return K .. 'glang:' .. primary end
local function k_queue(gid) return K .. 'queue:' .. gid end
local function k_queue_age(gid) return K .. 'qage:' .. gid end
local function k_group_rate(gid) return K .. 'grate:' .. gid end
local function k_family(primary) return K .. 'family:' .. primary end

-- ------------------------------------------------------------- utilities

-- Lua compares strings with strcoll, which follows Redis's locale; ids are
-- ordered by bytes in the engine (Rust `Ord` on `String`).
local function byte_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function contains(list, value)
  for _, x in ipairs(list) do
    if x == value then return true end
  end
  return false
end

local function without(list, value)
  local out = {}
  for _, x in ipairs(list) do
    if x ~= value then out[#out + 1] = x end
  end
  return out
end

local function insert_sorted(list, value)
  if contains(list, value) then return list end
  list[#list + 1] = value
  table.sort(list, byte_less)
  return list
end

local function split(s, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

local function null_to_nil(v)
  if v == cjson.null then return nil end
  return v
end

local function primary_subtag(tag)
  local i = string.find(tag, '-', 1, true)
  if i then return string.sub(tag, 1, i - 1) end
  return tag
end

-- validate::language_covers: the same tag, or a broader one (`de` serves `de-at`).
local function language_covers(agent_tag, customer_tag)
  if customer_tag == agent_tag then return true end
  return #customer_tag > #agent_tag
    and string.sub(customer_tag, 1, #agent_tag) == agent_tag
    and string.sub(customer_tag, #agent_tag + 1, #agent_tag + 1) == '-'
end

-- validate::language_lookup_keys: `de-at` -> `de-at`, `de`.
local function language_lookup_keys(tag)
  local keys, stop = { tag }, #tag
  while true do
    local found = nil
    for i = stop, 1, -1 do
      if string.sub(tag, i, i) == '-' then found = i break end
    end
    if not found then return keys end
    keys[#keys + 1] = string.sub(tag, 1, found - 1)
    stop = found - 1
  end
end

local function is_terminal(state)
  return state == 'Completed' or state == 'Abandoned' or state == 'Expired'
end

-- ------------------------------------------------------------ JSON output

local function js(s) return cjson.encode(s) end
-- Integers as JSON. string.format costs ~1.4k instructions a number
-- (callgrind), and a call formats the same few numbers many times (now,
-- attempts, sequence numbers in every rendering): small ones are
-- formatted once (by the first call: the libraries are not given `string`
-- while they load), the others once per call.
local function ji(n)
  local text = SMALL_INTS[n] or int_texts[n]
  if text == nil then
    text = string.format('%d', n)
    if n == n then int_texts[n] = text end
  end
  return text
end
local function jb(b) if b then return 'true' end return 'false' end
local function jos(s) if s == nil then return 'null' end return js(s) end
local function joi(n) if n == nil then return 'null' end return ji(n) end
local function jarr(list, render)
  -- Most lists rendered are empty (exclusions, transfers).
  if list[1] == nil then return '[]' end
  local out = {}
  for i = 1, #list do out[i] = render(list[i]) end
  return '[' .. table.concat(out, ',') .. ']'
end

local function render_skill(s) return '{"name":' .. js(s.name) .. ',"level":' .. ji(s.level) .. '}' end

local function render_offer_id(cid, attempt)
  return '{"conversation_id":' .. js(cid) .. ',"attempt":' .. ji(attempt) .. '}'
end

local function render_offer_record(o)
  return '{"attempt":' .. ji(o.attempt) .. ',"agent_id":' .. js(o.agent) .. ',"deadline":' .. ji(o.deadline)
    .. ',"delivered":' .. jb(o.delivered) .. ',"outcome":' .. js(o.outcome) .. '}'
end

local function render_transfer(t)
  return '{"from_agent":' .. js(t.from_agent) .. ',"to":' .. js(t.to) .. ',"note":' .. js(t.note)
    .. ',"at":' .. ji(t.at) .. '}'
end

-- Rows written before transfers and CSAT existed lack those fields: they
-- render as serde's defaults (no transfers, no score).
local function render_conversation_fields(c, position, wait)
  return '{"handoff":' .. c.handoff .. ',"state":' .. js(c.state) .. ',"agent_id":' .. jos(c.agent)
    .. ',"reason":' .. js(c.reason) .. ',"created_at":' .. ji(c.created_at) .. ',"updated_at":' .. ji(c.updated_at)
    .. ',"queued_since":' .. ji(c.queued_since) .. ',"assigned_at":' .. joi(c.assigned_at)
    .. ',"attempts":' .. ji(c.attempts) .. ',"seq":' .. ji(c.seq) .. ',"excluded":' .. jarr(c.excluded, js)
    .. ',"offers":' .. jarr(c.offers, render_offer_record) .. ',"disposition":' .. js(c.disposition)
    .. ',"queue_position":' .. ji(position) .. ',"expected_wait_ms":' .. ji(wait)
    .. ',"transfers":' .. jarr(c.transfers or {}, render_transfer) .. ',"csat":' .. joi(c.csat) .. '}'
end

-- A conversation as serde renders it. Without a queue position (events,
-- and views of conversations not queued) the last rendering of the same
-- row is reused while the row has not been touched since: the reply of
-- request, accept and complete is the string their event carries.
local function render_conversation(c, position, wait)
  if position ~= 0 or wait ~= 0 or c.id == nil then return render_conversation_fields(c, position, wait) end
  local changes = conversation_changes[c.id] or 0
  local last = rendered_conversations[c.id]
  if last and last.row == c and last.changes == changes then return last.text end
  local text = render_conversation_fields(c, 0, 0)
  rendered_conversations[c.id] = { row = c, changes = changes, text = text }
  return text
end

local function render_roster(e)
  return '{"agent_id":' .. js(e.agent_id) .. ',"display_name":' .. js(e.display_name)
    .. ',"skills":' .. jarr(e.skills, render_skill) .. ',"languages":' .. jarr(e.languages, js)
    .. ',"max_capacity":' .. ji(e.max_capacity) .. ',"allowed_regions":' .. jarr(e.allowed_regions, js)
    .. ',"attributes":' .. jarr(e.attributes, js) .. ',"token_epoch":' .. ji(e.token_epoch) .. '}'
end

-- Where the JSON value starting at byte `i` of `doc` ends (one past it).
-- No validation: the documents are serde's own output.
local function json_value_end(doc, i)
  local first = string.sub(doc, i, i)
  if first == '"' then
    local j = i + 1
    while true do
      local at = string.find(doc, '["\\]', j)
      if not at then return #doc + 1 end
      if string.sub(doc, at, at) == '"' then return at + 1 end
      j = at + 2
    end
  elseif first == '{' or first == '[' then
    local depth, j = 0, i
    while j <= #doc do
      local at = string.find(doc, '["{}%[%]]', j)
      if not at then return #doc + 1 end
      local ch = string.sub(doc, at, at)
      if ch == '"' then
        j = json_value_end(doc, at)
      else
        if ch == '{' or ch == '[' then depth = depth + 1 else depth = depth - 1 end
        j = at + 1
        if depth == 0 then return j end
      end
    end
    return j
  end
  return string.find(doc, '[,}%]%s]', i) or (#doc + 1)
end

-- `doc` (a JSON object) with the top-level fields named in `values` set to
-- the raw JSON given there (replaced in place, or added at the end when
-- missing), every other byte kept as it was (cjson would re-encode the
-- floats of the hand-off and lose digits).
local function json_set_fields(doc, values)
  local open = string.find(doc, '{', 1, true)
  local out, pos, seen, fields = { string.sub(doc, 1, open) }, open + 1, {}, 0
  while true do
    local key_start = string.find(doc, '[^%s,]', pos)
    if not key_start or string.sub(doc, key_start, key_start) == '}' then break end
    local key_end = json_value_end(doc, key_start)
    local key = string.sub(doc, key_start + 1, key_end - 2)
    local colon = string.find(doc, ':', key_end, true)
    local value_start = string.find(doc, '%S', colon + 1)
    local value_end = json_value_end(doc, value_start)
    if values[key] ~= nil then
      out[#out + 1] = string.sub(doc, pos, value_start - 1) .. values[key]
      seen[key] = true
    else
      out[#out + 1] = string.sub(doc, pos, value_end - 1)
    end
    fields = fields + 1
    pos = value_end
  end
  local missing = {}
  for key in pairs(values) do
    if not seen[key] then missing[#missing + 1] = key end
  end
  table.sort(missing)
  for _, key in ipairs(missing) do
    local comma = ','
    if fields == 0 then comma = '' end
    out[#out + 1] = comma .. js(key) .. ':' .. values[key]
    fields = fields + 1
  end
  out[#out + 1] = string.sub(doc, pos)
  return table.concat(out)
end

-- ------------------------------------------------------------ errors

local function err_not_found(what, id)
  return '{"kind":"not_found","what":' .. js(what) .. ',"id":' .. js(id) .. '}'
end
local function err_precondition(message) return '{"kind":"precondition","message":' .. js(message) .. '}' end
local function err_permission(message) return '{"kind":"permission","message":' .. js(message) .. '}' end
local function offline_error(agent_id)
  return err_precondition('agent `' .. agent_id .. '` is offline: go online first')
end

-- ------------------------------------------------------------ row cache

-- (The caches are declared at the top and emptied by `begin`.)

-- Rows are written as MessagePack: cjson prints every number with
-- `%.14g` and parses it back with `strtod`, and escapes the hand-off's
-- JSON inside the conversation row (callgrind on a replayed 1,100
-- hand-off run: 12% fewer Redis instructions with MessagePack). A row
-- that starts with `{` is JSON, written by a build before this one (or by
-- this one with `store.redis_row_format = "json"`, during a rolling
-- upgrade from such a build): both are read, so rows need no migration.
local function decode_row(raw)
  if string.byte(raw, 1) == 123 then return cjson.decode(raw) end
  return cmsgpack.unpack(raw)
end

local function encode_row(row)
  if settings.json_rows then return cjson.encode(row) end
  return cmsgpack.pack(row)
end

local function agent_record(id)
  local r = agents[id]
  if r == nil then
    local raw = redis.call('GET', k_agent(id))
    if raw then
      r = decode_row(raw)
    else
      r = false
    end
    agents[id] = r
  end
  return r or nil
end

local function session_of(id)
  local r = agent_record(id)
  if r then return r.session end
  return nil
end

local function touch_agent(id) dirty_agents[id] = true end

local function conversation(id)
  local c = conversations[id]
  if c == nil then
    local raw = redis.call('GET', k_conv(id))
    if raw then
      c = decode_row(raw)
    else
      c = false
    end
    conversations[id] = c
  end
  return c or nil
end

-- Every change to a conversation row is followed by this, before the row
-- is rendered again (a rendering is reused only until the next touch).
local function touch_conversation(id)
  dirty_conversations[id] = true
  conversation_changes[id] = (conversation_changes[id] or 0) + 1
end

local function roster_of(id)
  local e = rosters[id]
  if e == nil then
    local raw = redis.call('HGET', K_ROSTER, id)
    if raw then e = cjson.decode(raw) else e = false end
    rosters[id] = e
  end
  return e or nil
end

-- Whether the agent has a roster entry, without decoding it (HEXISTS)
-- unless this call already read it.
local function in_roster(id)
  local e = rosters[id]
  if e ~= nil then return e ~= false end
  local known = roster_listed[id]
  if known == nil then
    known = redis.call('HEXISTS', K_ROSTER, id) == 1
    roster_listed[id] = known
  end
  return known
end

-- Writes the changed rows and appends the events, once, at the end.
local function flush()
  sync_index()
  for id in pairs(dirty_agents) do
    local r = agents[id]
    if r then redis.call('SET', k_agent(id), encode_row(r)) end
  end
  for id in pairs(dirty_conversations) do
    local c = conversations[id]
    if c then
      redis.call('SET', k_conv(id), encode_row(c))
    else
      redis.call('DEL', k_conv(id))
    end
  end
  for _, e in ipairs(events) do
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', stream_max_len_text, '*', 'event', e)
  end
end

-- ------------------------------------------------------------ sessions

local function offerable(s)
  return s.stream ~= nil and not s.draining and s.wrap_up_until == nil and s.reject_until == nil
    and s.choice == 'available' and s.pending == nil and #s.active < s.capacity
end

local function status_of(s)
  if s.draining then return 'Draining' end
  if s.wrap_up_until ~= nil then return 'WrapUp' end
  if s.choice == 'away' then return 'Away' end
  local load = #s.active
  if s.pending ~= nil then load = load + 1 end
  if load >= s.capacity then return 'Busy' end
  return 'Available'
end

local function skill_level(skills, name)
  for _, s in ipairs(skills) do
    if s.name == name then return s.level end
  end
  return nil
end

local function index_keys(s)
  local keys = {}
  for _, language in ipairs(s.languages) do
    keys[#keys + 1] = k_avail(language, '*')
    for _, skill in ipairs(s.skills) do keys[#keys + 1] = k_avail(language, skill.name) end
  end
  return keys
end

-- Where the agent should be in the offerable index, as its session says:
-- recorded in `s.indexed` at once, written to Redis by `sync_index`.
local function reindex(id)
  local r = agent_record(id)
  if not r or not r.session then return end
  local s = r.session
  local want = nil
  if offerable(s) then want = s.idle_since end
  if want == s.indexed then return end
  if index_pending[id] == nil then index_pending[id] = s.indexed or false end
  s.indexed = want
  touch_agent(id)
end

-- Writes the index changes `reindex` recorded: for each agent, from where
-- it was in Redis to where its session says now (a ZADD moves an entry
-- that is already there, so a new score needs no ZREM first). Called
-- before anything reads the index and at the end of the call.
sync_index = function()
  if next(index_pending) == nil then return end
  for id, before in pairs(index_pending) do
    local r = agents[id]
    local s = r and r.session
    if s then
      local want = s.indexed
      if before == false then before = nil end
      if want ~= before then
        local keys = index_keys(s)
        if want ~= nil then
          local score = ji(want)
          for _, key in ipairs(keys) do redis.call('ZADD', key, score, id) end
        else
          for _, key in ipairs(keys) do redis.call('ZREM', key, id) end
        end
      end
    end
  end
  index_pending = {}
end

-- Out of the index at once (the session is about to change its skills and
-- languages, or to end), whatever `reindex` recorded before.
local function unindex(id)
  local r = agent_record(id)
  if not r or not r.session then return end
  local s = r.session
  local stored = s.indexed
  if index_pending[id] ~= nil then stored = index_pending[id] or nil end
  index_pending[id] = nil
  if stored ~= nil then
    for _, key in ipairs(index_keys(s)) do redis.call('ZREM', key, id) end
  end
  if s.indexed ~= nil or stored ~= nil then
    s.indexed = nil
    touch_agent(id)
  end
end

local function render_presence(id)
  local s = session_of(id)
  local away_reason = ''
  if s.choice == 'away' then away_reason = s.away_reason end
  local pending = 'null'
  if s.pending then pending = render_offer_id(s.pending.cid, s.pending.attempt) end
  return '{"agent_id":' .. js(id) .. ',"status":' .. js(status_of(s)) .. ',"away_reason":' .. js(away_reason)
    .. ',"skills":' .. jarr(s.skills, render_skill) .. ',"languages":' .. jarr(s.languages, js)
    .. ',"capacity":' .. ji(s.capacity) .. ',"active_conversations":' .. ji(#s.active)
    .. ',"stream_attached":' .. jb(s.stream ~= nil) .. ',"online_since":' .. ji(s.online_since)
    .. ',"last_heartbeat":' .. ji(s.last_heartbeat) .. ',"lease_expires":' .. ji(s.lease_expires)
    .. ',"idle_since":' .. ji(s.idle_since) .. ',"pending_offer":' .. pending .. '}'
end

-- ------------------------------------------------------------ conversations

local function pending_offer(c)
  if c.state ~= 'Offered' then return nil end
  local last = c.offers[#c.offers]
  if last and last.outcome == 'Pending' then return last end
  return nil
end

local function offer_record(c, attempt)
  for _, o in ipairs(c.offers) do
    if o.attempt == attempt then return o end
  end
  return nil
end

-- An event whose kind is `head .. rendered .. tail` (one concatenation: the
-- rendered conversation, ~1 KiB, is copied once).
local function push_event(agent_id, seq, head, rendered, tail)
  events[#events + 1] = '{"pool":' .. pool_json .. ',"at":' .. now_text .. ',"agent_id":' .. jos(agent_id)
    .. ',"seq":' .. ji(seq) .. ',"kind":' .. head .. (rendered or '') .. (tail or '') .. '}'
end

-- Appends an event for a conversation, bumping its sequence number; the
-- event carries the conversation as stored (no queue position).
local function emit(cid, agent_id, head, tail)
  local c = conversation(cid)
  if not c then return end
  c.seq = c.seq + 1
  touch_conversation(cid)
  push_event(agent_id, c.seq, head, render_conversation(c, 0, 0), tail)
end

local function notice(agent_id, code, message, status)
  push_event(agent_id, 0, '{"Notice":{"code":' .. js(code) .. ',"message":' .. js(message)
    .. ',"status":' .. js(status) .. '}}')
end

-- Group of identical requirements: `language|skill:level,...|=region`.
-- Languages and skill names cannot contain `|`, `,` or `:`; the region is
-- last, so it may contain anything.
local function group_id(c)
  local parts = {}
  for i, s in ipairs(c.skills) do parts[i] = s.name .. ':' .. ji(s.level) end
  local region = ''
  if c.region ~= nil then region = '=' .. c.region end
  return c.language .. '|' .. table.concat(parts, ',') .. '|' .. region
end

-- ------------------------------------------------------------ plans

-- A planned conversation's routing state lives in its row as `routed`
-- (engine `Routed`): the plan (decoded once from the serde JSON the Rust
-- side sent, see `decode_plan`), when its clock started (`since`), the
-- step in force (`step`, counted from 0 as in the engine), its
-- `generation` (older schedule deadlines are stale), the base
-- `priority` in the queue (a callback lowers it) and when the maximum
-- wait is due (`max_wait_at`, nil once a callback).

-- A plan as the script keeps it: serde's JSON of `RoutingPlan` with nulls
-- as nil and the maximum-wait action as `{ kind = ..., ... }`. Returns nil
-- and a message when the document is not a plan.
local decode_plan
local function decode_requirements(r)
  if type(r) ~= 'table' or type(r.language) ~= 'string' then return nil end
  local regions = null_to_nil(r.regions)
  return {
    language = r.language, language_widened = r.language_widened == true,
    skills = null_to_nil(r.skills) or {}, attributes = null_to_nil(r.attributes) or {},
    regions = regions,
  }
end

local function decode_plan_table(t)
  if type(t) ~= 'table' then return nil, 'not an object' end
  local steps = {}
  for i, step in ipairs(null_to_nil(t.steps) or {}) do
    local requirements = type(step) == 'table' and decode_requirements(step.requirements)
    if not requirements or type(step.after_ms) ~= 'number' then
      return nil, 'steps[' .. ji(i - 1) .. '] is not a plan step'
    end
    steps[i] = { after_ms = step.after_ms, requirements = requirements }
  end
  local aging = null_to_nil(t.aging) or {}
  local plan = {
    queue = null_to_nil(t.queue) or '', priority = null_to_nil(t.priority) or 0, steps = steps,
    strategy = null_to_nil(t.strategy) or 'LongestIdle',
    aging = { rate = null_to_nil(aging.rate_micro_per_second) or 0, ceiling = null_to_nil(aging.ceiling) or 9 },
    offer_timeout_ms = null_to_nil(t.offer_timeout_ms), wrap_up_ms = null_to_nil(t.wrap_up_ms),
    preferred_window_ms = null_to_nil(t.preferred_window_ms) or 0,
    roster_regions_if_listed = t.roster_regions_if_listed == true,
    misses_before_away = null_to_nil(t.misses_before_away),
    reject_delay_ms = null_to_nil(t.reject_delay_ms) or 0,
  }
  local max_wait = null_to_nil(t.max_wait)
  if max_wait then
    local action = type(max_wait) == 'table' and null_to_nil(max_wait.action)
    if type(action) ~= 'table' or type(max_wait.after_ms) ~= 'number' then
      return nil, 'max_wait is not a maximum wait'
    end
    local decoded
    if type(action.Expire) == 'table' then
      decoded = { kind = 'Expire', reason = action.Expire.reason or '' }
    elseif type(action.Callback) == 'table' then
      decoded = { kind = 'Callback', priority = action.Callback.priority or 0, reason = action.Callback.reason or '' }
    elseif type(action.Overflow) == 'table' then
      local nested, why = decode_plan_table(action.Overflow.plan)
      if not nested then return nil, 'max_wait.action.plan: ' .. why end
      decoded = { kind = 'Overflow', queue = action.Overflow.queue or '', plan = nested }
    else
      return nil, 'max_wait.action is not one of Expire, Overflow, Callback'
    end
    plan.max_wait = { after_ms = max_wait.after_ms, action = decoded }
  end
  return plan
end

decode_plan = function(raw)
  local ok, t = pcall(cjson.decode, raw)
  if not ok then return nil, 'not JSON' end
  return decode_plan_table(t)
end

local function err_invalid(field, reason)
  return '{"kind":"invalid","field":' .. js(field) .. ',"reason":' .. js(reason) .. '}'
end

-- engine `with_fallback_step`: a plan without steps routes on the
-- conversation's own requirements (language, skills, named region).
local function with_fallback_step(plan, c)
  if #plan.steps == 0 then
    local regions = nil
    if c.region ~= nil then regions = { c.region } end
    plan.steps = { {
      after_ms = 0,
      requirements = {
        language = c.language, language_widened = false, skills = c.skills, attributes = {}, regions = regions,
      },
    } }
  end
  return plan
end

-- RoutingPlan::step_at: the last step due after `waited` ms (0 with none).
local function step_at(plan, waited)
  local at = 0
  for i, step in ipairs(plan.steps) do
    if step.after_ms <= waited then at = i - 1 end
  end
  return at
end

local function current_requirements(routed)
  return routed.plan.steps[routed.step + 1].requirements
end

-- The group of a planned conversation: `language|skill:level,...|~{...}`
-- with the rest of its requirements and its aging as JSON in fixed field
-- order (engine `GroupKey` with `RoutedKey`): `w` widened, `a` attributes,
-- `g` regions (null: no rule), `l` roster regions if listed, `r` aging rate,
-- `c` ceiling. Equal requirements give equal ids.
local function routed_group_id(requirements, plan)
  local parts = {}
  for i, s in ipairs(requirements.skills) do parts[i] = s.name .. ':' .. ji(s.level) end
  local regions = 'null'
  if requirements.regions ~= nil then regions = jarr(requirements.regions, js) end
  return requirements.language .. '|' .. table.concat(parts, ',') .. '|~{"w":' .. jb(requirements.language_widened)
    .. ',"a":' .. jarr(requirements.attributes, js) .. ',"g":' .. regions
    .. ',"l":' .. jb(plan.roster_regions_if_listed) .. ',"r":' .. ji(plan.aging.rate)
    .. ',"c":' .. ji(plan.aging.ceiling) .. '}'
end

-- The group a conversation belongs to (or would), planned or not.
local function conversation_group_id(c)
  if c.routed then return routed_group_id(current_requirements(c.routed), c.routed.plan) end
  return group_id(c)
end

-- A group id's parts: language, skills, named region (unplanned) and the
-- rest of planned requirements (`{ w, a, g, l, r, c }` as above, or nil).
local function parse_group(gid)
  local a = string.find(gid, '|', 1, true)
  local b = string.find(gid, '|', a + 1, true)
  local skills = {}
  for name, level in string.gmatch(string.sub(gid, a + 1, b - 1), '([^,:]+):(%d+)') do
    skills[#skills + 1] = { name = name, level = tonumber(level) }
  end
  local rest = string.sub(gid, b + 1)
  local region, routed = nil, nil
  if string.sub(rest, 1, 1) == '~' then
    routed = cjson.decode(string.sub(rest, 2))
    routed.g = null_to_nil(routed.g)
  elseif rest ~= '' then
    region = string.sub(rest, 2)
  end
  return string.sub(gid, 1, a - 1), skills, region, routed
end

-- The base priority a conversation waits at.
local function queue_priority(c)
  if c.routed then return c.routed.priority end
  return c.priority
end

-- Queue member: fixed-width `inverted priority|queued since|arrival|id`, all
-- members scored 0, so ZRANGE is the engine's QueueKey order (higher
-- priority, then longer waiting, then arrival) and ZRANK the queue position.
-- Priorities are 0..=9 (plans are checked), so one digit: each priority
-- level starts with its own digit (ZRANGEBYLEX jumps between levels).
local function queue_member(c, arrival)
  return string.format('%d|%015d|%012d|%s', 9 - queue_priority(c), c.queued_since, arrival, c.id)
end

local function member_order(m)
  local p = split(m, '|')
  return tonumber(p[1]), tonumber(p[2]), tonumber(p[3]), p[4]
end

local function group_language(gid)
  return string.sub(gid, 1, string.find(gid, '|', 1, true) - 1)
end

local function enqueue(cid)
  local c = conversation(cid)
  if not c then return end
  local gid = conversation_group_id(c)
  local arrival = redis.call('INCR', K_ARRIVALS)
  local member = queue_member(c, arrival)
  redis.call('SADD', k_group_language(primary_subtag(group_language(gid))), gid)
  redis.call('SADD', K_GROUPS, gid)
  redis.call('ZADD', k_queue(gid), 0, member)
  redis.call('ZADD', k_queue_age(gid), ji(c.queued_since), cid)
  c.group = gid
  c.member = member
  touch_conversation(cid)
end

local function dequeue(cid)
  local c = conversation(cid)
  if not c or c.group == nil then return end
  local gid = c.group
  redis.call('ZREM', k_queue(gid), c.member)
  redis.call('ZREM', k_queue_age(gid), cid)
  if redis.call('ZCARD', k_queue(gid)) == 0 then
    redis.call('SREM', K_GROUPS, gid)
    redis.call('SREM', k_group_language(primary_subtag(group_language(gid))), gid)
  end
  c.group = nil
  c.member = nil
  touch_conversation(cid)
end

local function queue_position(c)
  if c.group == nil then return 0 end
  return redis.call('ZRANK', k_queue(c.group), c.member) or 0
end

-- A first offer now, in a rate window: a list of offer times of which the
-- last RATE_WINDOW count (`expected_wait_ms`), trimmed once it holds twice
-- that (one RPUSH per offer rather than an RPUSH and an LTRIM).
local function record_first_offer(key)
  if redis.call('RPUSH', key, now_text) >= 2 * RATE_WINDOW then
    redis.call('LTRIM', key, RATE_WINDOW_START, '-1')
  end
end

-- engine::expected_wait_in: (position + 1) over the recent rate of first
-- offers, the group's own once it has MIN_GROUP_SAMPLES, else the pool's.
local function expected_wait_ms(gid, position)
  local key = K_FIRST_OFFERS
  if redis.call('LLEN', k_group_rate(gid)) >= MIN_GROUP_SAMPLES then key = k_group_rate(gid) end
  local count = redis.call('LLEN', key)
  if count == 0 then return -1 end
  -- The last RATE_WINDOW entries (see `record_first_offer`).
  if count > RATE_WINDOW then count = RATE_WINDOW end
  local oldest = tonumber(redis.call('LINDEX', key, ji(-count)))
  local span = now - oldest
  if span < 1 then span = 1 end
  local per_ms = count / span
  return math.floor((position + 1) / per_ms + 0.5)
end

local function view(c)
  if c.state == 'Queued' then
    local position = queue_position(c)
    return render_conversation(c, position, expected_wait_ms(conversation_group_id(c), position))
  end
  return render_conversation(c, 0, 0)
end

local function render_snapshot(id)
  local s = session_of(id)
  local offers = {}
  if s.pending then
    local c = conversation(s.pending.cid)
    local o = c and pending_offer(c)
    if o then offers[1] = '[' .. render_offer_record(o) .. ',' .. render_conversation(c, 0, 0) .. ']' end
  end
  local assignments = {}
  for _, cid in ipairs(s.active) do
    local c = conversation(cid)
    if c then assignments[#assignments + 1] = render_conversation(c, 0, 0) end
  end
  local away_reason = ''
  if s.choice == 'away' then away_reason = s.away_reason end
  return '{"status":' .. js(status_of(s)) .. ',"away_reason":' .. js(away_reason) .. ',"offers":['
    .. table.concat(offers, ',') .. '],"assignments":[' .. table.concat(assignments, ',') .. ']}'
end

-- ------------------------------------------------------------ deadlines

-- Members are `<kind>|<fields>` with the kind numbered in the engine's
-- `Deadline` variant order (1 offer delivery, 2 offer timeout, 3 stream
-- grace, 4 lease, 5 wrap-up end, 6 maximum wait, 7 retention, 8 relaxation
-- step, 9 end of the preferred-agent window, A end of a reject delay: one
-- character each, so byte order is variant order), so entries due at the
-- same millisecond are handled in the same order as in memory. A planned
-- maximum wait carries its time (`6|conv|at`): a transfer or an overflow
-- installs a new one while the old may still be pending, as the engine's
-- set holds both (the stale one finds the time moved and does nothing).
-- NX: an earlier pending entry for the same thing stays (it fires first, as
-- in the engine's set). A wrap-up end carries its time in the member, so
-- several can be pending for one agent, as in the engine.
-- (Numbers go to Redis as integer strings: a Lua number passed to
-- redis.call is printed with `%.17g`, libc's slow float path.)
local function deadline_at(at, member) redis.call('ZADD', K_DEADLINES, 'NX', ji(at), member) end
local function lease_deadline(agent_id, at) redis.call('ZADD', K_DEADLINES, ji(at), '4|' .. agent_id) end

-- A deadline that can no longer do anything (its offer was delivered or
-- closed, its conversation ended) moves to `deadlines_defused` at its
-- time, so the sweep's next deadline and its pace are what they were (as
-- the engine's set keeps such an entry until it is due), but no sweep pops
-- it or reads a row for it: the `sweep` command drops the due ones at once
-- (`drop_due_defused`). Builds before kept them in `deadlines` as `~` and
-- the member, which every sweep popped one by one (two commands each, four
-- defused deadlines per hand-off); such entries are still dropped when
-- due (`act_on_deadline`).
local function defuse_deadline(member)
  local at = redis.call('ZSCORE', K_DEADLINES, member)
  if not at then return end
  redis.call('ZREM', K_DEADLINES, member)
  redis.call('ZADD', K_DEFUSED, at, member)
end

local function drop_due_defused()
  redis.call('ZREMRANGEBYSCORE', K_DEFUSED, '-inf', now_text)
end

local function finish(cid)
  deadline_at(now + settings.retention, '7|' .. cid)
  -- Every maximum wait of an ended conversation is a no-op (expire and
  -- max_wait_reached act on a queued or offered one only).
  local c = conversation(cid)
  if c and c.routed then
    if c.routed.max_wait_at ~= nil then defuse_deadline('6|' .. cid .. '|' .. ji(c.routed.max_wait_at)) end
  else
    defuse_deadline('6|' .. cid)
  end
end

-- engine::install_plan: starts executing `plan` for a conversation (not in
-- a queue group at the time): its clock starts now, every later step and
-- the end of the preferred window are scheduled, and the maximum wait.
local function install_plan(cid, plan, preferred)
  local c = conversation(cid)
  local generation = redis.call('INCR', K_PLAN_GENERATIONS)
  for i = 2, #plan.steps do
    local after = plan.steps[i].after_ms
    if after > 0 then
      deadline_at(now + after, string.format('8|%s|%012d|%06d', cid, generation, i - 1))
    end
  end
  if preferred and plan.preferred_window_ms > 0 then
    deadline_at(now + plan.preferred_window_ms, string.format('9|%s|%012d', cid, generation))
  end
  local max_wait_ms = settings.max_wait
  if plan.max_wait then max_wait_ms = plan.max_wait.after_ms end
  local max_wait_at = now + max_wait_ms
  deadline_at(max_wait_at, '6|' .. cid .. '|' .. ji(max_wait_at))
  c.routed = {
    plan = plan, since = now, step = step_at(plan, 0), generation = generation, priority = plan.priority,
    max_wait_at = max_wait_at,
  }
  touch_conversation(cid)
end

-- ------------------------------------------------------------ matching

-- engine::eligible: skills at level, language, region, not excluded.
-- (The roster entry is decoded only for a region: otherwise only whether
-- there is one matters.)
local function fits(agent_id, s, c)
  if not in_roster(agent_id) then return false end
  if contains(c.excluded, agent_id) then return false end
  local language_ok = false
  for _, l in ipairs(s.languages) do
    if language_covers(l, c.language) then language_ok = true break end
  end
  if not language_ok then return false end
  for _, required in ipairs(c.skills) do
    local level = skill_level(s.skills, required.name)
    if level == nil or level < required.level then return false end
  end
  if c.region ~= nil then return contains(roster_of(agent_id).allowed_regions, c.region) end
  return true
end

-- PlanRequirements::accepts_language.
local function accepts_language(requirements, agent_tag)
  return language_covers(agent_tag, requirements.language)
    or (requirements.language_widened and language_covers(requirements.language, agent_tag))
end

-- engine::plan_eligible: language (exact or family), skills, roster
-- attributes, and one region both admitting the agent (its resolved set)
-- and permitted by its roster entry.
local function plan_eligible(requirements, if_listed, s, roster)
  local language_ok = false
  for _, l in ipairs(s.languages) do
    if accepts_language(requirements, l) then language_ok = true break end
  end
  if not language_ok then return false end
  for _, required in ipairs(requirements.skills) do
    local level = skill_level(s.skills, required.name)
    if level == nil or level < required.level then return false end
  end
  for _, attribute in ipairs(requirements.attributes) do
    if not contains(roster.attributes, attribute) then return false end
  end
  if requirements.regions == nil then return true end
  for _, region in ipairs(requirements.regions) do
    local permitted = contains(roster.allowed_regions, region) or (if_listed and #roster.allowed_regions == 0)
    if permitted and s.regions ~= nil and contains(s.regions, region) then return true end
  end
  return false
end

-- engine::meets: an online agent meets planned requirements.
local function meets(agent_id, requirements, if_listed)
  local s = session_of(agent_id)
  local roster = roster_of(agent_id)
  if not s or not roster then return false end
  return plan_eligible(requirements, if_listed, s, roster)
end

-- engine::planned_fits: may take the planned conversation now, capacity aside.
local function planned_fits(agent_id, c)
  return not contains(c.excluded, agent_id)
    and meets(agent_id, current_requirements(c.routed), c.routed.plan.roster_regions_if_listed)
end

local function preferred_window_open(routed)
  return routed.plan.preferred_window_ms > 0 and now < routed.since + routed.plan.preferred_window_ms
end

-- engine::reserved_for_another: a planned conversation in its preferred
-- agent's window, that agent online and eligible, and not `agent_id`.
local function reserved_for_another(c, agent_id)
  if not c.routed or not preferred_window_open(c.routed) or c.preferred == nil then return false end
  return c.preferred ~= agent_id and planned_fits(c.preferred, c)
end

-- engine::planned_languages: the index tags where agents meeting the
-- requirements are (the tag's family when widened).
local function planned_languages(requirements)
  sync_index()
  if not requirements.language_widened then return language_lookup_keys(requirements.language) end
  local out = {}
  for _, tag in ipairs(redis.call('SMEMBERS', k_family(primary_subtag(requirements.language)))) do
    if accepts_language(requirements, tag) then out[#out + 1] = tag end
  end
  table.sort(out, byte_less)
  return out
end

-- engine::smallest_candidate_set: the smallest index set of `language`
-- with one of `skills` (any skill when none); nil when a skill has nobody.
local function smallest_candidate_key(language, skills)
  sync_index()
  if #skills == 0 then return k_avail(language, '*') end
  -- One skill: its set, empty or not (an empty one yields no candidate, as
  -- nil does), without the ZCARD.
  if #skills == 1 then return k_avail(language, skills[1].name) end
  local smallest, smallest_size = nil, nil
  for _, required in ipairs(skills) do
    local candidate = k_avail(language, required.name)
    local size = redis.call('ZCARD', candidate)
    if size == 0 then return nil end
    if smallest == nil or size < smallest_size then smallest, smallest_size = candidate, size end
  end
  return smallest
end

-- The availability probes: counts, up to `limit`, the agents of index
-- `key` (longest idle first) that `accepts`, skipping the ones already
-- `seen` under another language key; returns the new count.
local function count_in_index(key, limit, count, seen, accepts)
  local start = 0
  while count < limit do
    local chunk = redis.call('ZRANGE', key, ji(start), ji(start + SCAN_CHUNK - 1))
    if #chunk == 0 then break end
    for _, candidate in ipairs(chunk) do
      if count >= limit then break end
      if not seen[candidate] and accepts(candidate) then
        seen[candidate] = true
        count = count + 1
      end
    end
    start = start + SCAN_CHUNK
  end
  return count
end

local function cmp(a, b)
  if a < b then return -1 end
  if a > b then return 1 end
  return 0
end

-- engine::strategy_cmp: whether candidate `a` ({ id, score }) goes before
-- `b`; ties by longest idle, then agent id (bytes), so every replica
-- picks the same agent.
local function strategy_less(strategy, requirements, a, b)
  local ra, rb = agent_record(a.id), agent_record(b.id)
  local primary = 0
  if strategy == 'LeastOccupied' then
    local sa, sb = ra.session, rb.session
    if sa and sb then
      -- active / capacity compared exactly by cross multiplication.
      primary = cmp(#sa.active * math.max(sb.capacity, 1), #sb.active * math.max(sa.capacity, 1))
    end
  elseif strategy == 'BestSkillMatch' then
    local sa, sb = ra.session, rb.session
    if sa and sb then
      local function score(skills)
        local total = 0
        for _, required in ipairs(requirements.skills) do total = total + (skill_level(skills, required.name) or 0) end
        return total
      end
      primary = cmp(score(sb.skills), score(sa.skills))
    end
  elseif strategy == 'RoundRobin' then
    primary = cmp(ra.last_offer_seq or 0, rb.last_offer_seq or 0)
  elseif strategy == 'QualityWeighted' then
    -- (total + 4.0 × 5) / (count + 5), higher first, exactly.
    local qa, qb = ra.quality or {}, rb.quality or {}
    local na, da = (qa.csat_total or 0) + 20, (qa.csat_count or 0) + 5
    local nb, db = (qb.csat_total or 0) + 20, (qb.csat_count or 0) + 5
    primary = cmp(nb * da, na * db)
  end
  if primary ~= 0 then return primary < 0 end
  if a.score ~= b.score then return a.score < b.score end
  return byte_less(a.id, b.id)
end

-- PlanAging::effective in micro-points, exact in doubles: the boost
-- `rate × waited / 1000` is split into whole seconds and the rest.
local function effective_priority(priority, waited, rate, ceiling)
  local base = priority * MICRO
  if rate == 0 then return base end
  if waited < 0 then waited = 0 end
  local cap = ceiling * MICRO
  local seconds = math.floor(waited / 1000)
  local aged
  if seconds > 9 * MICRO then
    aged = cap
  else
    aged = base + rate * seconds + math.floor(rate * (waited - seconds * 1000) / 1000)
    if aged > cap then aged = cap end
  end
  if aged < base then aged = base end
  return aged
end

local make_offer
local go_offline

-- A queued conversation looks for the best offerable, eligible agent: the
-- preferred agent first, else per language key the smallest index set its
-- skills touch, walked from the longest idle.
local dispatch_planned

local function dispatch_conversation(cid)
  local c = conversation(cid)
  if not c or c.state ~= 'Queued' then return end
  if c.routed then
    dispatch_planned(cid, c)
    return
  end
  local best_agent, best_score = nil, nil
  if c.preferred ~= nil then
    local s = session_of(c.preferred)
    if s and offerable(s) and fits(c.preferred, s, c) then best_agent = c.preferred end
  end
  if best_agent == nil then
    for _, language in ipairs(language_lookup_keys(c.language)) do
      local key = smallest_candidate_key(language, c.skills)
      if key then
        local start, size, found, found_score = 0, FIRST_CHUNK, nil, nil
        while found == nil do
          local chunk = redis.call('ZRANGE', key, ji(start), ji(start + size - 1), 'WITHSCORES')
          if #chunk == 0 then break end
          for i = 1, #chunk, 2 do
            local candidate = chunk[i]
            local s = session_of(candidate)
            if s and fits(candidate, s, c) then
              found, found_score = candidate, tonumber(chunk[i + 1])
              break
            end
          end
          start = start + size
          size = math.min(size * 2, SCAN_CHUNK)
        end
        if found and (best_score == nil or found_score < best_score) then
          best_agent, best_score = found, found_score
        end
      end
    end
  end
  if best_agent then make_offer(cid, best_agent) end
end

-- engine::dispatch_planned: a queued planned conversation looks for an
-- agent: its preferred agent first (and only, while the window is open and
-- that agent is online and eligible), else by the plan's strategy among up
-- to STRATEGY_CANDIDATES eligible agents per language key (idle order).
dispatch_planned = function(cid, c)
  local routed = c.routed
  if c.preferred ~= nil and planned_fits(c.preferred, c) then
    local preferred = session_of(c.preferred)
    if preferred and offerable(preferred) then
      make_offer(cid, c.preferred)
      return
    end
    -- Reserved: the preferred agent gets it when free, others once the
    -- window ends.
    if preferred_window_open(routed) then return end
  end
  local requirements = current_requirements(routed)
  local strategy = routed.plan.strategy
  local limit = STRATEGY_CANDIDATES
  if strategy == 'LongestIdle' then limit = 1 end
  local candidates, seen = {}, {}
  for _, language in ipairs(planned_languages(requirements)) do
    local key = smallest_candidate_key(language, requirements.skills)
    if key then
      local start, taken = 0, 0
      while taken < limit do
        local chunk = redis.call('ZRANGE', key, ji(start), ji(start + SCAN_CHUNK - 1), 'WITHSCORES')
        if #chunk == 0 then break end
        for i = 1, #chunk, 2 do
          local candidate = chunk[i]
          if planned_fits(candidate, c) then
            taken = taken + 1
            if not seen[candidate] then
              seen[candidate] = true
              candidates[#candidates + 1] = { id = candidate, score = tonumber(chunk[i + 1]) }
            end
            if taken >= limit then break end
          end
        end
        start = start + SCAN_CHUNK
      end
    end
  end
  local best = nil
  for _, candidate in ipairs(candidates) do
    if best == nil or strategy_less(strategy, requirements, candidate, best) then best = candidate end
  end
  if best then make_offer(cid, best.id) end
end

-- Whether rank `a` ({ effective, queued_since, arrival, cid }) goes before `b`:
-- higher effective priority, then longer waiting, then arrival.
local function rank_less(a, b)
  if a.effective ~= b.effective then return a.effective > b.effective end
  if a.queued_since ~= b.queued_since then return a.queued_since < b.queued_since end
  if a.arrival ~= b.arrival then return a.arrival < b.arrival end
  return byte_less(a.cid, b.cid)
end

-- Whether the agent serves a group's requirements.
local function serves_group(s, roster, gid)
  local group_language, group_skills, group_region, routed = parse_group(gid)
  if routed then
    local requirements = {
      language = group_language, language_widened = routed.w, skills = group_skills, attributes = routed.a,
      regions = routed.g,
    }
    return plan_eligible(requirements, routed.l, s, roster), routed
  end
  local ok = false
  for _, l in ipairs(s.languages) do
    if language_covers(l, group_language) then ok = true break end
  end
  if not ok then return false end
  for _, required in ipairs(group_skills) do
    local level = skill_level(s.skills, required.name)
    if level == nil or level < required.level then return false end
  end
  if group_region ~= nil then return contains(roster.allowed_regions, group_region) end
  return true
end

-- An agent with spare capacity looks at the heads of the queue groups it
-- can serve (never at the whole queue) and takes the best waiting one,
-- skipping conversations it declined or missed and those reserved for
-- their preferred agent. With aging, the head of every priority level of a
-- group competes (aging keeps the order within a level): ZRANGEBYLEX jumps
-- from one level's digit to the next.
local function dispatch_agent(agent_id)
  local s = session_of(agent_id)
  if not s or not offerable(s) then return end
  -- Read when there is a group to look at (usually there is none: nobody
  -- waits); without a roster entry the agent takes nothing.
  local roster = nil
  local best = nil
  local seen_primaries = {}
  for _, language in ipairs(s.languages) do
    local primary = primary_subtag(language)
    if not seen_primaries[primary] then
      seen_primaries[primary] = true
      local gids = redis.call('SMEMBERS', k_group_language(primary))
      if #gids > 0 and roster == nil then
        roster = roster_of(agent_id)
        if not roster then return end
      end
      table.sort(gids, byte_less)
      for _, gid in ipairs(gids) do
        local serves, routed = serves_group(s, roster, gid)
        if serves then
          local aging = nil
          if routed and routed.r > 0 then aging = routed end
          local from = '-'
          while from do
            local start, head = 0, nil
            while head == nil do
              local chunk = redis.call('ZRANGEBYLEX', k_queue(gid), from, '+', 'LIMIT', ji(start), SCAN_CHUNK_TEXT)
              if #chunk == 0 then break end
              for _, member in ipairs(chunk) do
                local inverted, queued_since, arrival, cid = member_order(member)
                local c = conversation(cid)
                if c and not contains(c.excluded, agent_id) and not reserved_for_another(c, agent_id) then
                  head = { inverted = inverted, queued_since = queued_since, arrival = arrival, cid = cid }
                  break
                end
              end
              start = start + SCAN_CHUNK
            end
            if head == nil then break end
            local priority = 9 - head.inverted
            if aging then
              head.effective = effective_priority(priority, math.max(now - head.queued_since, 0), aging.r, aging.c)
            else
              head.effective = priority * MICRO
            end
            if best == nil or rank_less(head, best) then best = head end
            from = nil
            -- Past the rest of this priority level.
            if aging and head.inverted < 9 then from = '[' .. ji(head.inverted + 1) end
          end
        end
      end
    end
  end
  if best then make_offer(best.cid, agent_id) end
end

make_offer = function(cid, agent_id)
  dequeue(cid)
  local c = conversation(cid)
  if not c then return end
  c.attempts = c.attempts + 1
  local attempt = c.attempts
  local offer_timeout = settings.offer_timeout
  if c.routed and c.routed.plan.offer_timeout_ms then offer_timeout = c.routed.plan.offer_timeout_ms end
  local deadline = now + offer_timeout
  c.offers[#c.offers + 1] = { attempt = attempt, agent = agent_id, deadline = deadline, delivered = false, outcome = 'Pending' }
  c.state = 'Offered'
  c.agent = agent_id
  c.updated_at = now
  touch_conversation(cid)
  if attempt == 1 then
    record_first_offer(K_FIRST_OFFERS)
    local gid = conversation_group_id(c)
    -- Bound what arbitrary requirement mixes can take: start over (the
    -- pool-wide rate covers the gap).
    if redis.call('SADD', K_RATE_GROUPS, gid) == 1
      and redis.call('SCARD', K_RATE_GROUPS) > MAX_RATE_GROUPS then
      for _, old in ipairs(redis.call('SMEMBERS', K_RATE_GROUPS)) do redis.call('DEL', k_group_rate(old)) end
      redis.call('DEL', K_RATE_GROUPS)
      redis.call('SADD', K_RATE_GROUPS, gid)
    end
    record_first_offer(k_group_rate(gid))
  end
  -- The pool's offer counter, stamped on the agent (round robin).
  local offer_seq = redis.call('INCR', K_OFFER_SEQ)
  local r = agent_record(agent_id)
  if r then
    r.shift.offers = r.shift.offers + 1
    r.last_offer_seq = offer_seq
    if r.session then r.session.pending = { cid = cid, attempt = attempt } end
    touch_agent(agent_id)
  end
  reindex(agent_id)
  deadline_at(now + settings.delivery_grace, '1|' .. cid .. '|' .. ji(attempt))
  deadline_at(deadline, '2|' .. cid .. '|' .. ji(attempt))
  emit(cid, agent_id, '{"Offered":{"offer":' .. render_offer_id(cid, attempt) .. ',"deadline":' .. ji(deadline)
    .. ',"conversation":', '}}')
end

-- Ends the pending offer `attempt` with `outcome`: the agent's reservation
-- is released and, unless accepted, the agent is told it is revoked.
local function close_offer(cid, attempt, outcome, reason)
  local c = conversation(cid)
  if not c then return end
  local o = offer_record(c, attempt)
  if not o then return end
  o.outcome = outcome
  touch_conversation(cid)
  -- Its delivery and timeout deadlines act on a pending offer only.
  -- A delivered offer's delivery deadline was defused when it was marked
  -- (`mark_delivered`): no round trip to find it gone.
  local attempt_text = ji(attempt)
  if not o.delivered then defuse_deadline('1|' .. cid .. '|' .. attempt_text) end
  defuse_deadline('2|' .. cid .. '|' .. attempt_text)
  local agent_id = o.agent
  local s = session_of(agent_id)
  if s and s.pending and s.pending.cid == cid and s.pending.attempt == attempt then
    s.pending = nil
    touch_agent(agent_id)
  end
  if outcome ~= 'Accepted' then
    emit(cid, agent_id, '{"OfferRevoked":{"offer":' .. render_offer_id(cid, attempt) .. ',"reason":' .. js(reason)
      .. ',"conversation":', '}}')
  end
  reindex(agent_id)
end

-- Back to the queue with a reason; it keeps its original waiting time. The
-- event names `previous_holder` (an agent who held it assigned), if any.
local function requeue_for(cid, reason, previous_holder)
  local c = conversation(cid)
  if not c or is_terminal(c.state) or c.state == 'Queued' then return end
  c.state = 'Queued'
  c.agent = nil
  c.assigned_at = nil
  c.reason = reason
  c.updated_at = now
  touch_conversation(cid)
  enqueue(cid)
  emit(cid, previous_holder, '{"Requeued":{"conversation":', '}}')
end

local function requeue(cid, reason) requeue_for(cid, reason, nil) end

-- A draining agent with nothing left in hand goes offline. Returns whether
-- it did.
local function finish_drain_if_done(agent_id)
  local s = session_of(agent_id)
  if s and s.draining and #s.active == 0 and s.pending == nil then
    go_offline(agent_id, 'drained')
    return true
  end
  return false
end

-- engine::agent_freed: an agent just lost a conversation or an offer it
-- held: a draining one with nothing left goes offline, any other is offered
-- the next conversation it can serve.
local function agent_freed(agent_id)
  if not finish_drain_if_done(agent_id) then
    reindex(agent_id)
    dispatch_agent(agent_id)
  end
end

-- Takes a conversation away from whoever has it: a pending offer is
-- withdrawn (the agent is told, with `reason`), an assignment leaves the
-- agent's hands. The conversation's own state is the caller's to set.
local function release_holder(cid, reason)
  local c = conversation(cid)
  if not c then return end
  if c.state == 'Offered' then
    local o = pending_offer(c)
    if o then close_offer(cid, o.attempt, 'Withdrawn', reason) end
  elseif c.state == 'Assigned' and c.agent ~= nil then
    local s = session_of(c.agent)
    if s then
      s.active = without(s.active, cid)
      if #s.active == 0 then s.idle_since = now end
      touch_agent(c.agent)
    end
  end
end

local function withdraw_undelivered(cid, attempt)
  local c = conversation(cid)
  local o = c and offer_record(c, attempt)
  local agent_id = o and o.agent
  close_offer(cid, attempt, 'Withdrawn', 'offer not delivered')
  -- The agent's stream is evidently not carrying events: offer it nothing
  -- more until it subscribes again.
  if agent_id then
    local s = session_of(agent_id)
    if s then
      s.stream = nil
      touch_agent(agent_id)
    end
    reindex(agent_id)
  end
  requeue(cid, 'offer not delivered')
  dispatch_conversation(cid)
end

local function offer_timed_out(cid, o)
  local agent_id = o.agent
  close_offer(cid, o.attempt, 'TimedOut', 'offer timed out')
  local c = conversation(cid)
  if c then
    c.excluded = insert_sorted(c.excluded, agent_id)
    touch_conversation(cid)
  end
  local threshold = settings.misses_before_away
  if c and c.routed and c.routed.plan.misses_before_away then threshold = c.routed.plan.misses_before_away end
  local now_away = false
  local r = agent_record(agent_id)
  if r then
    r.shift.missed = r.shift.missed + 1
    if r.session then
      r.session.misses = r.session.misses + 1
      if threshold > 0 and r.session.misses >= threshold then
        r.session.choice = 'away'
        r.session.away_reason = 'missed_offers'
        now_away = true
      end
    end
    touch_agent(agent_id)
  end
  if now_away then
    reindex(agent_id)
    notice(agent_id, 'missed_offers', ji(threshold) .. ' offers in a row were missed: set away', 'Away')
  end
  requeue(cid, 'offer timed out')
  dispatch_conversation(cid)
  if not finish_drain_if_done(agent_id) then dispatch_agent(agent_id) end
end

local function expire(cid, reason)
  local c = conversation(cid)
  if not c then return end
  local freed = nil
  if c.state == 'Queued' then
    dequeue(cid)
  elseif c.state == 'Offered' then
    local o = pending_offer(c)
    if o then
      close_offer(cid, o.attempt, 'Withdrawn', 'maximum wait exceeded')
      freed = o.agent
    end
  else
    return
  end
  c.state = 'Expired'
  c.agent = nil
  c.reason = reason
  c.updated_at = now
  touch_conversation(cid)
  finish(cid)
  emit(cid, nil, '{"Ended":{"conversation":', '}}')
  -- The agent it was offered to is free again (as after a cancel).
  if freed then agent_freed(freed) end
end

-- engine::max_wait_reached: a planned conversation reached its queue's
-- maximum wait: expired with the queue's reason, moved to the overflow
-- queue's plan (its clock starts now; the place by waiting time stays), or
-- kept at the callback priority without a maximum wait any more.
local function max_wait_reached(cid)
  local c = conversation(cid)
  if not c or not (c.state == 'Queued' or c.state == 'Offered') then return end
  local routed = c.routed
  if not routed then return end
  local max_wait = routed.plan.max_wait
  local reason
  if not max_wait then
    expire(cid, MAX_WAIT_REASON)
    return
  end
  local action = max_wait.action
  if action.kind == 'Expire' then
    expire(cid, action.reason)
    return
  elseif action.kind == 'Callback' then
    routed.priority = action.priority
    routed.max_wait_at = nil
    reason = action.reason
  else
    local plan = action.plan
    if #plan.steps == 0 then
      plan.steps = { { after_ms = 0, requirements = current_requirements(routed) } }
    end
    -- Installed while possibly queued: the regroup below moves it to the
    -- new plan's group (dequeue reads the group it is in from the row).
    install_plan(cid, plan, c.preferred ~= nil)
    reason = 'moved to queue `' .. action.queue .. '` after the maximum wait'
  end
  touch_conversation(cid)
  local queued = c.group ~= nil
  if queued then
    -- Regroup: the priority or the requirements changed.
    dequeue(cid)
    enqueue(cid)
  end
  c.reason = reason
  c.updated_at = now
  if queued then
    emit(cid, nil, '{"Requeued":{"conversation":', '}}')
    dispatch_conversation(cid)
  end
end

-- Offline at once: pending offer withdrawn, assigned conversations requeued.
go_offline = function(agent_id, reason)
  unindex(agent_id)
  local r = agent_record(agent_id)
  if not r or not r.session then return {} end
  local s = r.session
  r.session = nil
  r.shift.ended_at = now
  touch_agent(agent_id)
  redis.call('ZREM', K_DEADLINES, '4|' .. agent_id)
  redis.call('SREM', K_ONLINE, agent_id)
  local requeued = {}
  if s.pending then
    close_offer(s.pending.cid, s.pending.attempt, 'Withdrawn', reason)
    requeue(s.pending.cid, reason)
    requeued[#requeued + 1] = s.pending.cid
  end
  for _, cid in ipairs(s.active) do
    requeue_for(cid, reason, agent_id)
    requeued[#requeued + 1] = cid
  end
  notice(agent_id, 'offline', reason, 'Offline')
  for _, cid in ipairs(requeued) do dispatch_conversation(cid) end
  return requeued
end

-- ------------------------------------------------------------ sweep

-- How long the `delivery_paused` key outlives its time (ms of real time):
-- only so that a pool nobody pauses any more does not keep it for ever.
-- Its value, not its expiry, decides (test clocks move `now`, not Redis's).
local DELIVERY_PAUSED_TTL = '600000'

-- Whether an offer found undelivered at its delivery deadline gets another
-- grace instead of being withdrawn: while this call's replica runs behind
-- (ARGV[17]), or while any other replica calling the pool does. An offer
-- is marked delivered by the replica holding the agent's stream, so when
-- that replica is late, a sweep on a replica that keeps up must not take
-- its lateness for a dead stream (seen: two replicas on one Redis, each
-- withdrawing the other's offers while its feed ran a second behind). A
-- paused replica's calls write until when (`mark_delivery_pause`); the
-- key is read at most once per call, and only when an undelivered offer
-- is due.
local function delivery_checks_paused()
  if settings.delivery_checks_paused then return true end
  if pool_delivery_paused == nil then
    local until_ms = tonumber(redis.call('GET', K_DELIVERY_PAUSED) or '')
    pool_delivery_paused = until_ms ~= nil and until_ms > now
  end
  return pool_delivery_paused
end

-- A paused replica's call: the pool's delivery checks stay paused for
-- every replica until one grace from now (a paused replica's sweeper calls
-- every pool many times a grace, so the pause lasts while it does).
local function mark_delivery_pause()
  if settings.delivery_checks_paused then
    redis.call('SET', K_DELIVERY_PAUSED, string.format('%d', now + settings.delivery_grace),
      'PX', DELIVERY_PAUSED_TTL)
  end
end

local function act_on_deadline(member)
  -- `~`: defused by a build before `deadlines_defused` (see
  -- `defuse_deadline`).
  if string.byte(member, 1) == 126 then return end
  local p = split(member, '|')
  local kind = p[1]
  if kind == '1' then
    local c = conversation(p[2])
    local o = c and pending_offer(c)
    if o and o.attempt == tonumber(p[3]) and not o.delivered then
      if delivery_checks_paused() then
        deadline_at(now + settings.delivery_grace, member)
      else
        withdraw_undelivered(p[2], o.attempt)
      end
    end
  elseif kind == '2' then
    local c = conversation(p[2])
    local o = c and pending_offer(c)
    if o and o.attempt == tonumber(p[3]) then offer_timed_out(p[2], o) end
  elseif kind == '3' then
    local s = session_of(p[2])
    local still_detached = s ~= nil and s.stream == nil
    local c = conversation(p[3])
    local o = c and pending_offer(c)
    if still_detached and o and o.attempt == tonumber(p[4]) and o.agent == p[2] then
      withdraw_undelivered(p[3], o.attempt)
    end
  elseif kind == '4' then
    local s = session_of(p[2])
    if s and s.lease_expires <= now then go_offline(p[2], 'agent lost') end
  elseif kind == '5' then
    local s = session_of(p[2])
    if s and s.wrap_up_until ~= nil and s.wrap_up_until <= now then
      s.wrap_up_until = nil
      touch_agent(p[2])
      local status = status_of(s)
      reindex(p[2])
      notice(p[2], 'status_changed', 'wrap-up ended', status)
      dispatch_agent(p[2])
    end
  elseif kind == '6' then
    local c = conversation(p[2])
    if c and c.routed then
      if c.routed.max_wait_at ~= nil and c.routed.max_wait_at <= now then max_wait_reached(p[2]) end
    else
      expire(p[2], MAX_WAIT_REASON)
    end
  elseif kind == '7' then
    -- Retention is over: an ended conversation is forgotten.
    local c = conversation(p[2])
    if c and is_terminal(c.state) then
      conversations[p[2]] = false
      touch_conversation(p[2])
    end
  elseif kind == '8' then
    -- A schedule step is due: the conversation moves to the group of its
    -- new requirements and looks for an agent at once.
    local c = conversation(p[2])
    local routed = c and c.routed
    local step = tonumber(p[4])
    if routed and routed.generation == tonumber(p[3]) and step > routed.step then
      routed.step = math.min(step, #routed.plan.steps - 1)
      touch_conversation(p[2])
      if c.group ~= nil then
        dequeue(p[2])
        enqueue(p[2])
        dispatch_conversation(p[2])
      end
    end
  elseif kind == '9' then
    -- The preferred agent's window ended: anyone eligible may have it.
    local c = conversation(p[2])
    if c and c.routed and c.routed.generation == tonumber(p[3]) then dispatch_conversation(p[2]) end
  elseif kind == 'A' then
    -- An agent's reject delay may have ended.
    local s = session_of(p[2])
    if s and s.reject_until ~= nil and s.reject_until <= now then
      s.reject_until = nil
      touch_agent(p[2])
      reindex(p[2])
      dispatch_agent(p[2])
    end
  end
end

-- Pops what is due, oldest first, one at a time (acting on one deadline may
-- add or remove others). Atomic with the rest of the script, so two
-- sweepers never act on the same entry. Returns whether the limit stopped it.
local function sweep(limit)
  local done = 0
  while done < limit do
    local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now_text, 'LIMIT', '0', '1')
    if #due == 0 then return false end
    redis.call('ZREM', K_DEADLINES, due[1])
    act_on_deadline(due[1])
    done = done + 1
  end
  return #redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now_text, 'LIMIT', '0', '1') > 0
end

-- ------------------------------------------------------------ commands

local commands = {}

function commands.upsert_roster()
  local entry = cjson.decode(arg(1))
  local id = entry.agent_id
  local old = roster_of(id)
  local created = old == nil
  if old and old.token_epoch > entry.token_epoch then entry.token_epoch = old.token_epoch end
  local rendered = render_roster(entry)
  redis.call('HSET', K_ROSTER, id, rendered)
  rosters[id] = entry
  return '[' .. rendered .. ',' .. jb(created) .. ']'
end

function commands.go_online()
  local id = arg(1)
  local request = cjson.decode(arg(2))
  local self_register = arg(3) == '1'
  local location = arg(4)
  if location == '' then location = nil end
  local capacity = nil
  if arg(5) ~= '' then capacity = tonumber(arg(5)) end
  local roster = roster_of(id)
  if not roster then
    if not self_register then return nil, err_not_found('roster entry for agent', id) end
    local languages = request.languages
    if #languages == 0 then languages = { 'en' } end
    roster = {
      agent_id = id, display_name = id, skills = request.skills, languages = languages,
      max_capacity = capacity or 1, allowed_regions = {}, attributes = {}, token_epoch = 0,
    }
    redis.call('HSET', K_ROSTER, id, render_roster(roster))
    rosters[id] = roster
  end
  -- Narrowing only: widening the roster entry is refused naming the field.
  local skills = roster.skills
  if #request.skills > 0 then
    for i, skill in ipairs(request.skills) do
      local level = skill_level(roster.skills, skill.name)
      if level == nil then
        return nil, err_permission('`skills[' .. ji(i - 1) .. ']`: skill `' .. skill.name .. '` is not in the roster entry')
      end
      if skill.level > level then
        return nil, err_permission('`skills[' .. ji(i - 1) .. '].level`: ' .. ji(skill.level)
          .. ' is above the roster level ' .. ji(level) .. ' for `' .. skill.name .. '`')
      end
    end
    skills = request.skills
  end
  local languages = roster.languages
  if #request.languages > 0 then
    for i, language in ipairs(request.languages) do
      if not contains(roster.languages, language) then
        return nil, err_permission('`languages[' .. ji(i - 1) .. ']`: `' .. language .. '` is not in the roster entry')
      end
    end
    languages = request.languages
  end
  local max_capacity = roster.max_capacity
  if capacity ~= nil and capacity > max_capacity then
    return nil, err_permission('`capacity`: ' .. ji(capacity) .. ' is above the roster maximum ' .. ji(max_capacity))
  end
  capacity = capacity or max_capacity

  unindex(id)
  -- The family of each tag an agent may be indexed under, for widened
  -- look-ups (engine `families`): listed when the session takes its
  -- languages, so before it is ever indexed (an agent is indexed and
  -- unindexed with every offer; the languages change only here). Tags whose
  -- sets emptied stay listed: an empty set adds no candidate, so stale
  -- members change no decision.
  for _, language in ipairs(languages) do
    redis.call('SADD', k_family(primary_subtag(language)), language)
  end
  local r = agent_record(id)
  if not r then
    r = {}
    agents[id] = r
    redis.call('SADD', K_AGENTS, id)
  end
  touch_agent(id)
  if r.session then
    local s = r.session
    s.skills, s.languages, s.capacity = skills, languages, capacity
    if location then s.location = location end
    s.last_heartbeat = now
    s.lease_expires = now + settings.lease
    lease_deadline(id, s.lease_expires)
  else
    r.session = {
      skills = skills, languages = languages, capacity = capacity, location = location,
      choice = 'available', away_reason = '', active = {}, online_since = now,
      last_heartbeat = now, lease_expires = now + settings.lease, idle_since = now, misses = 0,
    }
    -- A new shift; lifetime quality (`r.quality`) carries over.
    r.shift = {
      started_at = now, offers = 0, accepted = 0, declined = 0, missed = 0, completed = 0, handle_ms_total = 0,
      transfers = 0, csat_count = 0, csat_total = 0,
    }
    lease_deadline(id, now + settings.lease)
    redis.call('SADD', K_ONLINE, id)
    notice(id, 'online', 'agent is online', 'Available')
  end
  reindex(id)
  dispatch_agent(id)
  return render_presence(id)
end

function commands.attach_stream()
  local id = arg(1)
  local s = session_of(id)
  if not s then return nil, offline_error(id) end
  local stream_id = redis.call('INCR', K_STREAM_IDS)
  s.stream = stream_id
  touch_agent(id)
  reindex(id)
  dispatch_agent(id)
  return '[' .. ji(stream_id) .. ',' .. render_snapshot(id) .. ']'
end

function commands.detach_stream()
  local id, stream_id = arg(1), tonumber(arg(2))
  local s = session_of(id)
  if not s or s.stream ~= stream_id then return 'null' end
  s.stream = nil
  touch_agent(id)
  -- A pending offer stays for the grace period, so an app that reconnects
  -- at once still sees it; after that it is withdrawn (not a miss).
  if s.pending then
    deadline_at(now + settings.delivery_grace, '3|' .. id .. '|' .. s.pending.cid .. '|' .. ji(s.pending.attempt))
  end
  reindex(id)
  return 'null'
end

function commands.heartbeat()
  local id, location = arg(1), arg(2)
  local s = session_of(id)
  if not s then return nil, offline_error(id) end
  s.last_heartbeat = now
  s.lease_expires = now + settings.lease
  if location ~= '' then s.location = location end
  touch_agent(id)
  lease_deadline(id, s.lease_expires)
  return render_presence(id)
end

function commands.set_status()
  local id, choice, reason = arg(1), arg(2), arg(3)
  local s = session_of(id)
  if not s then return nil, offline_error(id) end
  if choice == 'available' then
    -- Available ends wrap-up early and cancels a drain.
    s.misses = 0
    s.away_reason = ''
    s.wrap_up_until = nil
    s.draining = false
  else
    s.away_reason = reason
  end
  s.choice = choice
  touch_agent(id)
  local status = status_of(s)
  reindex(id)
  notice(id, 'status_changed', 'status changed', status)
  dispatch_agent(id)
  return js(status_of(session_of(id)))
end

function commands.go_offline()
  return jarr(go_offline(arg(1), arg(2)), js)
end

-- Arguments: the hand-off (serde JSON, kept as is), what matching reads
-- of it, and the routing plan (serde JSON of `RoutingPlan`, checked by the
-- Rust side) or nothing. A repeated request keeps the first plan.
function commands.request()
  local handoff = arg(1)
  local routing = cjson.decode(arg(2))
  local cid = routing.conversation_id
  local plan = nil
  if arg(3) and arg(3) ~= '' then
    local why
    plan, why = decode_plan(arg(3))
    if not plan then return nil, err_invalid('plan', 'unreadable routing plan: ' .. why) end
  end
  local existing = conversation(cid)
  -- The same id: returned as it stands; the Rust side compares payloads.
  if existing then return '[' .. view(existing) .. ',false]' end
  local c = {
    id = cid, handoff = handoff, language = routing.language, skills = routing.required_skills,
    priority = routing.priority, region = null_to_nil(routing.region),
    preferred = null_to_nil(routing.preferred_agent), state = 'Queued', reason = '',
    created_at = now, updated_at = now, queued_since = now, attempts = 0, seq = 0,
    excluded = {}, offers = {}, disposition = '',
  }
  conversations[cid] = c
  touch_conversation(cid)
  if plan then
    install_plan(cid, with_fallback_step(plan, c), c.preferred ~= nil)
  else
    deadline_at(now + settings.max_wait, '6|' .. cid)
  end
  emit(cid, nil, '{"Queued":{"conversation":', '}}')
  dispatch_conversation(cid)
  -- Only a conversation nobody could take at once gets a place in its
  -- queue group, as in the engine (skipping the round trip through the
  -- group saves Redis ~90 µs per hand-off that finds a free agent).
  if c.state == 'Queued' then enqueue(cid) end
  return '[' .. view(c) .. ',true]'
end

-- One offer reached its agent's stream (see `commands.offer_delivered`).
local function mark_delivered(agent_id, cid, attempt)
  local c = conversation(cid)
  local o = c and offer_record(c, attempt)
  if not (o and o.agent == agent_id and not o.delivered) then return end
  o.delivered = true
  touch_conversation(cid)
  -- Its delivery deadline acts on an undelivered offer only.
  defuse_deadline('1|' .. cid .. '|' .. ji(attempt))
end

-- Offers that reached their agents' streams, as (agent, conversation,
-- attempt) triples: a replica sends those of a pool together (one round
-- trip for every offer its streams wrote while the previous call ran).
-- Unknown offers, and offers not the named agent's, are ignored.
function commands.offer_delivered()
  local i = 1
  while arg(i) ~= nil do
    mark_delivered(arg(i), arg(i + 1), tonumber(arg(i + 2)))
    i = i + 3
  end
  return 'null'
end

local CLOSED = {
  Accepted = 'was already accepted',
  Declined = 'was declined',
  TimedOut = 'has expired',
  Withdrawn = 'was withdrawn',
  Pending = 'is pending',
}

-- The offer record if it exists and is this agent's.
local function offer_for(agent_id, cid, attempt)
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  local o = offer_record(c, attempt)
  local name = cid .. '#' .. ji(attempt)
  if not o then
    return nil, err_precondition('offer `' .. name .. '` does not exist (the conversation is at attempt '
      .. ji(c.attempts) .. ')')
  end
  if o.agent ~= agent_id then
    return nil, err_permission('offer `' .. name .. '` was made to another agent')
  end
  return o
end

function commands.accept()
  local agent_id, cid, attempt = arg(1), arg(2), tonumber(arg(3))
  local o, err = offer_for(agent_id, cid, attempt)
  if not o then return nil, err end
  local name = cid .. '#' .. ji(attempt)
  if o.outcome == 'Accepted' then return view(conversation(cid)) end
  if o.outcome == 'Pending' and o.deadline <= now then
    sweep(settings.sweep_limit)
    return nil, err_precondition('offer `' .. name .. '` has expired')
  end
  if o.outcome ~= 'Pending' then return nil, err_precondition('offer `' .. name .. '` ' .. CLOSED[o.outcome]) end
  close_offer(cid, attempt, 'Accepted', '')
  local c = conversation(cid)
  c.state = 'Assigned'
  c.agent = agent_id
  c.assigned_at = now
  c.reason = ''
  c.updated_at = now
  touch_conversation(cid)
  local r = agent_record(agent_id)
  if r then
    r.shift.accepted = r.shift.accepted + 1
    if r.session then
      r.session.active = insert_sorted(r.session.active, cid)
      r.session.misses = 0
    end
    touch_agent(agent_id)
  end
  emit(cid, agent_id, '{"Assigned":{"conversation":', '}}')
  reindex(agent_id)
  dispatch_agent(agent_id)
  return view(c)
end

function commands.decline()
  local agent_id, cid, attempt, reason = arg(1), arg(2), tonumber(arg(3)), arg(4)
  local o, err = offer_for(agent_id, cid, attempt)
  if not o then return nil, err end
  if o.outcome == 'Declined' then return 'null' end
  if o.outcome ~= 'Pending' then
    return nil, err_precondition('offer `' .. cid .. '#' .. ji(attempt) .. '` ' .. CLOSED[o.outcome])
  end
  local why = 'declined'
  if reason ~= '' then why = 'declined: ' .. reason end
  local declined = conversation(cid)
  local reject_delay = 0
  if declined.routed then reject_delay = declined.routed.plan.reject_delay_ms end
  local declining = session_of(agent_id)
  if reject_delay > 0 and declining then
    -- Set before the offer closes, so the agent is not indexed (offered
    -- anything) until the delay ends.
    local until_at = now + reject_delay
    if declining.reject_until == nil or declining.reject_until < until_at then declining.reject_until = until_at end
    touch_agent(agent_id)
    deadline_at(until_at, 'A|' .. agent_id .. '|' .. ji(until_at))
  end
  close_offer(cid, attempt, 'Declined', why)
  local c = conversation(cid)
  c.excluded = insert_sorted(c.excluded, agent_id)
  touch_conversation(cid)
  local r = agent_record(agent_id)
  if r then
    r.shift.declined = r.shift.declined + 1
    touch_agent(agent_id)
  end
  requeue(cid, why)
  dispatch_conversation(cid)
  if not finish_drain_if_done(agent_id) then dispatch_agent(agent_id) end
  return 'null'
end

function commands.complete()
  local agent_id, cid, disposition = arg(1), arg(2), arg(3)
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  if c.state == 'Completed' and c.agent == agent_id then return view(c) end
  if not (c.state == 'Assigned' and c.agent == agent_id) then
    return nil, err_precondition('conversation `' .. cid .. '` is not assigned to agent `' .. agent_id .. '`')
  end
  local assigned_at = c.assigned_at or now
  c.state = 'Completed'
  c.disposition = disposition
  c.reason = 'completed by agent'
  c.updated_at = now
  touch_conversation(cid)
  local r = agent_record(agent_id)
  local wrap_up_until = nil
  if r then
    r.shift.completed = r.shift.completed + 1
    r.shift.handle_ms_total = r.shift.handle_ms_total + math.max(now - assigned_at, 0)
    if r.session then
      r.session.active = without(r.session.active, cid)
      if #r.session.active == 0 then r.session.idle_since = now end
      -- Wrap-up: no new offers until then (set_status available ends it).
      local wrap_up = settings.wrap_up
      if c.routed and c.routed.plan.wrap_up_ms then wrap_up = c.routed.plan.wrap_up_ms end
      if wrap_up > 0 and not r.session.draining then
        r.session.wrap_up_until = now + wrap_up
        wrap_up_until = r.session.wrap_up_until
      end
    end
    touch_agent(agent_id)
  end
  if wrap_up_until then deadline_at(wrap_up_until, '5|' .. agent_id .. '|' .. ji(wrap_up_until)) end
  finish(cid)
  emit(cid, agent_id, '{"Ended":{"conversation":', '}}')
  if finish_drain_if_done(agent_id) then return view(c) end
  reindex(agent_id)
  dispatch_agent(agent_id)
  return view(c)
end

function commands.cancel()
  local cid, reason = arg(1), arg(2)
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  if is_terminal(c.state) then return view(c) end
  local why = 'cancelled by gateway'
  if reason ~= '' then why = 'cancelled by gateway: ' .. reason end
  local state = c.state
  local holder = c.agent
  if state == 'Queued' then dequeue(cid) end
  release_holder(cid, why)
  c.state = 'Abandoned'
  c.reason = why
  c.updated_at = now
  touch_conversation(cid)
  local notify = nil
  if state == 'Assigned' then notify = holder end
  finish(cid)
  emit(cid, notify, '{"Ended":{"conversation":', '}}')
  if holder then agent_freed(holder) end
  return view(c)
end

-- Goes offline once the work in hand is done: no new offers from now on,
-- offline when the last conversation completes (at once if there is none).
-- Returns whether the agent is offline now.
function commands.drain()
  local id = arg(1)
  local s = session_of(id)
  if not s then return nil, offline_error(id) end
  s.draining = true
  touch_agent(id)
  reindex(id)
  if finish_drain_if_done(id) then return 'true' end
  notice(id, 'draining', 'draining: no new offers; offline after the last conversation', 'Draining')
  return 'false'
end

-- engine::check_target: whether `target` can be offered the conversation
-- now (a supervisor's reassignment, an agent's transfer). Returns the
-- refusal, or nil.
local function check_target(c, target)
  local s = session_of(target)
  if not s then return offline_error(target) end
  if c.agent == target or not offerable(s) then
    return err_precondition('agent `' .. target .. '` cannot take an offer now (status '
      .. status_of(s) .. ', stream attached: ' .. jb(s.stream ~= nil) .. ')')
  end
  return nil
end

-- engine::move_conversation: takes a conversation from whoever has it (who
-- is excluded from then on) and offers it to `target`, or queues it for
-- anyone eligible. The gateway and the previous holder see `why`.
local function move_conversation(cid, target, why)
  local c = conversation(cid)
  local state = c.state
  local holder = c.agent
  release_holder(cid, why)
  if holder then
    c.excluded = insert_sorted(c.excluded, holder)
    touch_conversation(cid)
  end
  if state == 'Queued' then
    -- Already queued: only the reason changes (a new event says so).
    c.reason = why
    c.updated_at = now
    touch_conversation(cid)
    emit(cid, nil, '{"Requeued":{"conversation":', '}}')
  else
    requeue_for(cid, why, holder)
  end
  if target then make_offer(cid, target) else dispatch_conversation(cid) end
  if holder then agent_freed(holder) end
  return view(c)
end

-- A supervisor moves a conversation: back to the queue (no target; the
-- current agent is excluded so it goes elsewhere), or straight to a named
-- agent as an offer. The gateway sees the reason.
function commands.reassign()
  local cid, target, reason = arg(1), arg(2), arg(3)
  if target == '' then target = nil end
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  if is_terminal(c.state) then
    return nil, err_precondition('conversation `' .. cid .. '` is ' .. string.lower(c.state)
      .. ' and cannot be reassigned')
  end
  if target then
    local err = check_target(c, target)
    if err then return nil, err end
  end
  local why = 'reassigned by supervisor'
  if reason ~= '' then why = 'reassigned by supervisor: ' .. reason end
  return move_conversation(cid, target, why)
end

-- engine::transfer: the agent holding a conversation hands it on, to a
-- named agent (an offer) or to the queue with new requirements. The
-- hand-off keeps every other field byte for byte; the transfer is recorded
-- with the conversation and counted in the agent's shift.
-- Arguments: agent, conversation, `agent` or `queue`, the target agent
-- (agent) or `{"category","required_skills","language"}` (queue), note,
-- and for a queue the target queue's routing plan (serde JSON) or nothing:
-- it replaces the conversation's plan, its clock starting now; without
-- one the conversation is routed on the transfer's requirements.
function commands.transfer()
  local agent_id, cid, kind, target, note = arg(1), arg(2), arg(3), arg(4), arg(5)
  local plan = nil
  if kind == 'queue' and arg(6) and arg(6) ~= '' then
    local why
    plan, why = decode_plan(arg(6))
    if not plan then return nil, err_invalid('plan', 'unreadable routing plan: ' .. why) end
  end
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  if c.state ~= 'Assigned' or c.agent ~= agent_id then
    return nil, err_precondition('conversation `' .. cid .. '` is not assigned to agent `' .. agent_id .. '`')
  end
  local to, queue = nil, nil
  if kind == 'agent' then
    if target == agent_id then
      return nil, err_precondition('agent `' .. agent_id .. '` cannot transfer a conversation to itself')
    end
    local err = check_target(c, target)
    if err then return nil, err end
    to = 'agent:' .. target
  else
    queue = cjson.decode(target)
    to = 'queue:' .. queue.category
  end
  local why = 'transferred by agent `' .. agent_id .. '` to ' .. to
  if note ~= '' then why = why .. ': ' .. note end
  c.transfers = c.transfers or {}
  c.transfers[#c.transfers + 1] = { from_agent = agent_id, to = to, note = note, at = now }
  if queue then
    -- Requirements change while nothing holds it in a queue group: it is
    -- assigned until `move_conversation` requeues it (into its new group).
    local fields = {
      category = js(queue.category),
      required_skills = jarr(queue.required_skills, render_skill),
    }
    c.skills = queue.required_skills
    local language = null_to_nil(queue.language)
    if language ~= nil then
      fields.language = js(language)
      c.language = language
    end
    c.handoff = json_set_fields(c.handoff, fields)
    -- The plan was for the old requirements: from here on the target
    -- queue's plan routes it, if any, else the transfer's requirements.
    c.routed = nil
    if plan then install_plan(cid, with_fallback_step(plan, c), c.preferred ~= nil) end
  end
  touch_conversation(cid)
  local r = agent_record(agent_id)
  if r then
    r.shift.transfers = (r.shift.transfers or 0) + 1
    touch_agent(agent_id)
  end
  if queue then target = nil end
  return move_conversation(cid, target, why)
end

-- engine::report_csat: the customer's score for a completed conversation,
-- once, counted for the agent who completed it in its shift and in its
-- lifetime quality (kept in the agent row across sessions). The same score
-- again is a no-op; another is refused.
function commands.report_csat()
  local cid, score = arg(1), tonumber(arg(2))
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  if c.state ~= 'Completed' then
    return nil, err_precondition('conversation `' .. cid .. '` is ' .. string.lower(c.state)
      .. ': CSAT is reported for completed conversations')
  end
  if c.csat ~= nil then
    if c.csat == score then return view(c) end
    return nil, err_precondition('conversation `' .. cid .. '` already has CSAT ' .. ji(c.csat))
  end
  c.csat = score
  touch_conversation(cid)
  local r = c.agent and agent_record(c.agent)
  if r then
    r.shift.csat_count = (r.shift.csat_count or 0) + 1
    r.shift.csat_total = (r.shift.csat_total or 0) + score
    local quality = r.quality or { csat_count = 0, csat_total = 0 }
    quality.csat_count = quality.csat_count + 1
    quality.csat_total = quality.csat_total + score
    r.quality = quality
    touch_agent(c.agent)
  end
  return view(c)
end

-- engine::set_agent_regions: the regions whose geofence admits the agent
-- (resolved by the caller), as a JSON array, or nothing to forget them.
-- A change lets the agent look for work at once.
function commands.set_agent_regions()
  local id, raw = arg(1), arg(2)
  local s = session_of(id)
  if not s then return nil, offline_error(id) end
  local regions = nil
  if raw ~= '' then
    local ok, decoded = pcall(cjson.decode, raw)
    if not ok or type(decoded) ~= 'table' then return nil, err_invalid('regions', 'not a list of region names') end
    regions = decoded
  end
  local same = (regions == nil) == (s.regions == nil)
  if same and regions ~= nil then
    same = #regions == #s.regions
    for i = 1, #regions do
      if regions[i] ~= s.regions[i] then same = false break end
    end
  end
  if same then return 'null' end
  s.regions = regions
  touch_agent(id)
  dispatch_agent(id)
  return 'null'
end

function commands.sweep()
  local more = sweep(settings.sweep_limit)
  drop_due_defused()
  -- The next deadline, live or defused (see `defuse_deadline`).
  local next_at = nil
  for _, key in ipairs({ K_DEADLINES, K_DEFUSED }) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local at = tonumber(first[2])
      if next_at == nil or at < next_at then next_at = at end
    end
  end
  local next_deadline = 'null'
  if next_at ~= nil then next_deadline = ji(next_at) end
  return '{"next":' .. next_deadline .. ',"more":' .. jb(more) .. '}'
end

-- Queries: read only, no sweep first (as the in-memory store).
local queries = {}

function queries.conversation()
  local cid = arg(1)
  local c = conversation(cid)
  if not c then return nil, err_not_found('conversation', cid) end
  return view(c)
end

function queries.agent_snapshot()
  local id = arg(1)
  if not session_of(id) then return nil, offline_error(id) end
  return render_snapshot(id)
end

-- engine::availability: how many eligible agents could be offered a
-- would-be hand-off now (walking at most `limit` of the smallest matching
-- index set), and the expected wait when none could.
-- engine::availability_with_plan, with a routing plan as the third
-- argument: agents meeting the plan's first requirements (regions and
-- attributes included), and the expected wait in its group.
local function availability_with_plan(probe, limit, raw)
  local plan, why = decode_plan(raw)
  if not plan then return nil, err_invalid('plan', 'unreadable routing plan: ' .. why) end
  plan = with_fallback_step(plan, probe)
  local requirements = plan.steps[step_at(plan, 0) + 1].requirements
  local if_listed = plan.roster_regions_if_listed
  local seen, count = {}, 0
  for _, language in ipairs(planned_languages(requirements)) do
    local key = smallest_candidate_key(language, requirements.skills)
    if key then
      count = count_in_index(key, limit, count, seen, function(candidate)
        return meets(candidate, requirements, if_listed)
      end)
    end
  end
  if count > 0 then return '[' .. ji(count) .. ',0]' end
  local gid = routed_group_id(requirements, plan)
  local waiting = redis.call('ZCARD', k_queue(gid))
  return '[0,' .. ji(expected_wait_ms(gid, waiting)) .. ']'
end

function queries.availability()
  local routing = cjson.decode(arg(1))
  local limit = tonumber(arg(2))
  local probe = {
    language = routing.language, skills = routing.required_skills,
    region = null_to_nil(routing.region), excluded = {},
  }
  if arg(3) and arg(3) ~= '' then return availability_with_plan(probe, limit, arg(3)) end
  local seen, count = {}, 0
  for _, language in ipairs(language_lookup_keys(probe.language)) do
    local key = smallest_candidate_key(language, probe.skills)
    if key then
      count = count_in_index(key, limit, count, seen, function(candidate)
        local s = session_of(candidate)
        return s ~= nil and fits(candidate, s, probe)
      end)
    end
  end
  if count > 0 then return '[' .. ji(count) .. ',0]' end
  local gid = group_id(probe)
  local waiting = redis.call('ZCARD', k_queue(gid))
  return '[0,' .. ji(expected_wait_ms(gid, waiting)) .. ']'
end

function queries.agents()
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', K_ONLINE)) do
    if session_of(id) then out[#out + 1] = render_presence(id) end
  end
  return '[' .. table.concat(out, ',') .. ']'
end

-- Depth and longest wait per required skill, from the groups.
function queries.queue_stats()
  local by_skill, names = {}, {}
  local total_queued = 0
  for _, gid in ipairs(redis.call('SMEMBERS', K_GROUPS)) do
    local depth = redis.call('ZCARD', k_queue(gid))
    local oldest = redis.call('ZRANGE', k_queue_age(gid), 0, 0, 'WITHSCORES')
    local longest = 0
    if #oldest > 0 then longest = math.max(now - tonumber(oldest[2]), 0) end
    total_queued = total_queued + depth
    local _, skills = parse_group(gid)
    local group_names = {}
    if #skills == 0 then group_names = { '*' } end
    for _, s in ipairs(skills) do group_names[#group_names + 1] = s.name end
    for _, name in ipairs(group_names) do
      local entry = by_skill[name]
      if not entry then
        entry = { depth = 0, longest = 0 }
        by_skill[name] = entry
        names[#names + 1] = name
      end
      entry.depth = entry.depth + depth
      entry.longest = math.max(entry.longest, longest)
    end
  end
  table.sort(names, byte_less)
  local queues = {}
  for i, name in ipairs(names) do
    queues[i] = '{"skill":' .. js(name) .. ',"depth":' .. ji(by_skill[name].depth) .. ',"longest_wait_ms":'
      .. ji(by_skill[name].longest) .. '}'
  end
  local online, available, assigned, offered = 0, 0, 0, 0
  for _, id in ipairs(redis.call('SMEMBERS', K_ONLINE)) do
    local s = session_of(id)
    if s then
      online = online + 1
      if offerable(s) then available = available + 1 end
      assigned = assigned + #s.active
      if s.pending then offered = offered + 1 end
    end
  end
  return '{"queues":[' .. table.concat(queues, ',') .. '],"total_queued":' .. ji(total_queued)
    .. ',"total_offered":' .. ji(offered) .. ',"total_assigned":' .. ji(assigned)
    .. ',"agents_online":' .. ji(online) .. ',"agents_available":' .. ji(available) .. '}'
end

local function render_quality(q)
  q = q or {}
  return '{"csat_count":' .. ji(q.csat_count or 0) .. ',"csat_total":' .. ji(q.csat_total or 0) .. '}'
end

function queries.shift_stats()
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', K_AGENTS)) do
    local r = agent_record(id)
    if r then
      local shift = r.shift
      local stop = now
      if not r.session and shift.ended_at then stop = shift.ended_at end
      out[#out + 1] = '{"agent_id":' .. js(id) .. ',"online":' .. jb(r.session ~= nil) .. ',"online_ms":'
        .. ji(math.max(stop - shift.started_at, 0)) .. ',"shift":{"started_at":' .. ji(shift.started_at)
        .. ',"ended_at":' .. joi(shift.ended_at) .. ',"offers":' .. ji(shift.offers) .. ',"accepted":'
        .. ji(shift.accepted) .. ',"declined":' .. ji(shift.declined) .. ',"missed":' .. ji(shift.missed)
        .. ',"completed":' .. ji(shift.completed) .. ',"handle_ms_total":' .. ji(shift.handle_ms_total)
        .. ',"transfers":' .. ji(shift.transfers or 0) .. ',"csat_count":' .. ji(shift.csat_count or 0)
        .. ',"csat_total":' .. ji(shift.csat_total or 0) .. '},"quality":' .. render_quality(r.quality) .. '}'
    end
  end
  return '[' .. table.concat(out, ',') .. ']'
end

-- ------------------------------------------------------------ entry point

-- After an outage, no lease expires until a full lease after it: when
-- nobody reached the pool (no command, no sweep) for longer than the
-- threshold, Redis was unreachable or every replica was down, and agents
-- could not heartbeat either. So before any deadline is acted on, every
-- lease of the pool is pushed to at least now + lease. Normal operation
-- never trips it: every replica's sweeper reaches every pool many times a
-- second. The gap is measured on Redis's own clock, never a pinned test
-- clock. Returns the outage report for the reply, or nil.
--
-- The library also remembers when it saw each pool reached (its state
-- lives as long as this Redis process and this library version): a pool
-- it saw within the threshold cannot have been in an outage, so that call
-- skips the round trip through `last_contact` unless the key is a quarter
-- threshold old. The key stays fresh enough for other versions of the
-- library (a rolling upgrade) and for a restarted Redis, whose libraries
-- start with no memory (a gap across a restart reads up to a quarter
-- threshold long).
local function extend_leases_after_outage()
  local seen, written = contact_seen[K], contact_written[K]
  contact_seen[K] = contact_now
  local recently_seen = seen ~= nil and seen <= contact_now
    and contact_now - seen <= settings.outage_threshold
  if recently_seen and written ~= nil and contact_now - written < settings.outage_threshold / 4 then
    return nil
  end
  contact_written[K] = contact_now
  -- One SET ... GET (Redis 6.2+) instead of a GET and a SET.
  local last = tonumber(redis.call('SET', K_LAST_CONTACT, ji(contact_now), 'GET'))
  if last == nil then return nil end
  if recently_seen and seen > last then last = seen end
  local gap = contact_now - last
  if gap <= settings.outage_threshold then return nil end
  local at_least = now + settings.lease
  local extended = 0
  local online = redis.call('SMEMBERS', K_ONLINE)
  table.sort(online, byte_less)
  for _, id in ipairs(online) do
    local s = session_of(id)
    if s and s.lease_expires < at_least then
      s.lease_expires = at_least
      touch_agent(id)
      lease_deadline(id, at_least)
      extended = extended + 1
    end
  end
  return '{"gap_ms":' .. ji(gap) .. ',"leases_extended":' .. ji(extended) .. '}'
end

-- Whether this call found an outage (see above), for the reply.
local outage = nil

-- `first_event`: where this command's events start in `events` (a batch's
-- commands share one list, flushed once; each reply carries its own).
local function reply(value, err, first_event)
  -- One concatenation of every part (the events are the bulk of it).
  local out
  if err then
    out = { '{"status":"err","error":', err, ',"events":[' }
  else
    if value == nil then error('a switchboard command returned no value') end
    out = { '{"status":"ok","value":', value, ',"events":[' }
  end
  if settings.events_in_reply then
    first_event = first_event or 1
    for i = first_event, #events do
      if i > first_event then out[#out + 1] = ',' end
      out[#out + 1] = events[i]
    end
  end
  out[#out + 1] = ']'
  if outage then
    out[#out + 1] = ',"outage":'
    out[#out + 1] = outage
  end
  out[#out + 1] = '}'
  return table.concat(out)
end

-- Whether this call has checked for an outage and marked a delivery pause
-- (done once per call, before its first command that is not a query).
local contacted

-- Runs `command` with its arguments (see `arg`): a query as it stands, a
-- command after the outage check and the deadlines due.
local function run_command()
  local query = queries[command]
  if query then return query() end
  if not contacted then
    outage = extend_leases_after_outage()
    mark_delivery_pause()
    contacted = true
  end
  -- Deadlines due are acted on first, so a command never sees an offer or a
  -- lease that has already run out (as the in-memory store does).
  if command ~= 'sweep' then sweep(settings.sweep_limit) end
  return commands[command]()
end

local function known(name) return commands[name] ~= nil or queries[name] ~= nil end

local function unknown_command(name)
  return redis.error_reply('unknown switchboard command ' .. tostring(name))
end

-- A batch: several commands of one pool in one call, each answered as if
-- called alone, in order, at the same `now` (src/batch.rs sends together the
-- commands that queued up while its previous call ran). After the fixed
-- arguments: the number of commands, then for each its name, its argument
-- count and its arguments. What a call costs whatever it does (the FCALL,
-- `begin`, the outage check, writing rows and events back) is paid once;
-- each command still sweeps first, as alone. The reply is an array of the
-- commands' replies, each the document the command alone would return.
local function run_batch()
  local n = tonumber(ARGV[FIRST_ARG + 1]) or 0
  local windows = {}
  local at = FIRST_ARG + 2
  for j = 1, n do
    local name, count = ARGV[at], tonumber(ARGV[at + 1])
    if not known(name) then return unknown_command(name) end
    if count == nil or at + 1 + count > #ARGV then
      return redis.error_reply('malformed switchboard batch at command ' .. j)
    end
    windows[j] = { name = name, base = at + 1, count = count }
    at = at + 2 + count
  end
  local replies = {}
  for j, window in ipairs(windows) do
    command, arg_base, arg_count = window.name, window.base, window.count
    local first_event = #events + 1
    local value, err = run_command()
    replies[j] = reply(value, err, first_event)
    outage = nil
  end
  -- A refused command changes nothing itself, but what the sweeps did stays.
  flush()
  return replies
end

local function dispatch(keys, args)
  begin(keys, args)
  outage = nil
  contacted = false
  if command == 'batch' then return run_batch() end
  if not known(command) then return unknown_command(command) end
  local value, err = run_command()
  -- A refused command changes nothing itself, but what the sweep did stays.
  if not queries[command] then flush() end
  return reply(value, err)
end

-- The Rust side (src/script.rs) names the function after the library's
-- version, so replicas running different builds never call each other's.
redis.register_function('__SWITCHBOARD_FUNCTION__', dispatch)
