"""The Lua scripts a Redis limiter runs: lease (check and grant), flush (settle and give back), raise (budget sync).

Each runs atomically in Redis; the arguments are documented above each script.
"""

from __future__ import annotations

LEASE_SHARE = 8  # a lease's extra is at most 1/LEASE_SHARE of what the limit leaves free

# ARGV: replica, slot_life_ms, call_tokens, call_cost, lease_requests, held_at_s, n, then 8 values per scope
# (per dimension requests, tokens, cost, slots: what the replica set aside for this call and what it holds
# besides, for the minute or window of held_at_s), then 6 per scope (prefix, rpm, tpm, budget, budget_seconds,
# parallel). A dimension is checked where the call needs more than was set aside (a budget also for a call that
# reserves nothing). Returns {0, now_ms, then per scope: requests, tokens, cost, slots granted} or
# {scope_index, what, value, now_s}.
LEASE_LUA = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now_s / 60)
local rid, life, nt, nc, lease, held_at, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local share = """ + str(LEASE_SHARE) + """
local function win(secs) if secs > 0 then return tostring(math.floor(now_s / secs)) end return 'all' end
local function slots(p)
  local v = redis.call('HVALS', p .. ':ph')
  local total = 0
  for i = 1, #v do total = total + tonumber(v[i]) end
  return total
end
local function clear_dead(p, most)
  -- slot holders past their deadline are replicas that died
  local dead = redis.call('ZRANGEBYSCORE', p .. ':pl', '-inf', now_ms, 'LIMIT', 0, most)
  if #dead > 0 then
    redis.call('HDEL', p .. ':ph', unpack(dead))
    redis.call('ZREM', p .. ':pl', unpack(dead))
  end
end
local lim = 8 + 8 * n
local plan = {}
for s = 0, n - 1 do
  local b, h = lim + s * 6, 8 + s * 8
  local p, rpm, tpm, budget, bsecs, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]),
    tonumber(ARGV[b+3]), tonumber(ARGV[b+4]), tonumber(ARGV[b+5])
  local held = {}
  for i = 0, 7 do held[i] = tonumber(ARGV[h + i]) end
  if math.floor(held_at / 60) ~= minute then held[0], held[1], held[2], held[3] = 0, 0, 0, 0 end
  if bsecs > 0 and math.floor(held_at / bsecs) ~= math.floor(now_s / bsecs) then held[4], held[5] = 0, 0 end
  -- per dimension: limit, count, need, set aside, held besides, most held after the grant, name
  local d = {{rpm, 0, 1, held[0], held[1], lease, 'rpm'}, {tpm, 0, nt, held[2], held[3], lease * nt, 'tpm'},
             {budget, 0, nc, held[4], held[5], lease * nc, 'budget'}, {par, 0, 1, held[6], held[7], lease, 'parallel'}}
  if rpm >= 0 or tpm >= 0 then
    local v = redis.call('HMGET', p .. ':m:' .. minute, 'r', 't')
    d[1][2], d[2][2] = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  end
  if budget >= 0 then d[3][2] = tonumber(redis.call('GET', p .. ':spend:' .. win(bsecs)) or '0') end
  if par >= 0 then
    clear_dead(p, 16)
    d[4][2] = slots(p)
  end
  for i = 1, 4 do
    local x = d[i]
    if x[1] >= 0 and (x[3] > x[4] or (i == 3 and x[3] <= 0)) and x[2] >= x[1] then
      if i == 4 then
        clear_dead(p, 100000)
        x[2] = slots(p)
      end
      if x[2] >= x[1] then return {s + 1, x[7], string.format('%.17g', x[2]), now_s} end
    end
  end
  plan[s] = d
end
local out = {0, now_ms}
for s = 0, n - 1 do
  local b = lim + s * 6
  local p, bsecs = ARGV[b], tonumber(ARGV[b+4])
  local g = {0, 0, 0, 0}
  for i, x in ipairs(plan[s]) do
    if x[1] >= 0 then
      -- what the call lacks, plus up to `most` held in all but at most 1/share of what stays free
      local short = math.max(0, x[3] - x[4])
      local free = x[1] - x[2] - short
      local more = 0
      if free > 0 and x[6] > x[5] + x[3] then more = math.min(x[6] - x[5] - x[3], free / share) end
      if i ~= 3 then more = math.floor(more) end
      g[i] = short + more
    end
  end
  local k = p .. ':m:' .. minute
  local fresh = redis.call('EXISTS', k) == 0
  if g[1] > 0 then redis.call('HINCRBY', k, 'r', g[1]) end
  if g[2] > 0 then redis.call('HINCRBY', k, 't', g[2]) end
  if fresh and (g[1] > 0 or g[2] > 0) then redis.call('EXPIRE', k, 120) end
  if g[3] > 0 then
    k = p .. ':spend:' .. win(bsecs)
    if redis.call('EXISTS', k) == 0 and bsecs > 0 then
      redis.call('SET', k, string.format('%.17g', g[3]), 'EX', bsecs + 86400)
    else
      redis.call('INCRBYFLOAT', k, string.format('%.17g', g[3]))
    end
  end
  if g[4] > 0 then
    redis.call('HINCRBY', p .. ':ph', rid, g[4])
    redis.call('ZADD', p .. ':pl', now_ms + life, rid)
    redis.call('PEXPIRE', p .. ':ph', life + 60000)
    redis.call('PEXPIRE', p .. ':pl', life + 60000)
  end
  out[#out + 1] = g[1]
  out[#out + 1] = g[2]
  out[#out + 1] = string.format('%.17g', g[3])
  out[#out + 1] = g[4]
end
return out
"""

# ARGV: replica, slot_life_ms, count, then 4 values per operation: op, key, amount, budget_seconds.
# op: 'r' or 't' (requests or tokens of a minute hash), 'c' (a budget window), 'P' (the slots this replica
# holds, absolute, with its heartbeat; key = prefix), 'h' (heartbeat only; key = prefix). Counts never go below
# zero (a Redis that lost its data).
FLUSH_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, life = ARGV[1], tonumber(ARGV[2])
local i = 4
for e = 1, tonumber(ARGV[3]) do
  local op, k, v, bsecs = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
  i = i + 4
  if op == 'r' or op == 't' then
    local now = redis.call('HINCRBY', k, op, v)
    if now < 0 then redis.call('HSET', k, op, 0) end
    if redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, 120) end
  elseif op == 'c' then
    local now = tonumber(redis.call('INCRBYFLOAT', k, ARGV[i-2]))
    if now < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
    if bsecs > 0 and redis.call('TTL', k) < 0 then redis.call('EXPIRE', k, bsecs + 86400) end
  elseif op == 'P' and v <= 0 then
    redis.call('HDEL', k .. ':ph', rid)
    redis.call('ZREM', k .. ':pl', rid)
  else
    if op == 'P' then redis.call('HSET', k .. ':ph', rid, v) end
    redis.call('ZADD', k .. ':pl', now_ms + life, rid)
    redis.call('PEXPIRE', k .. ':ph', life + 60000)
    redis.call('PEXPIRE', k .. ':pl', life + 60000)
  end
end
return 1
"""

# ARGV: count, then 3 values per counter: key, amount, budget_seconds. Raises each budget counter to `amount`.
RAISE_LUA = """
local raised = 0
for i = 2, tonumber(ARGV[1]) * 3, 3 do
  local k, v, bsecs = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  if tonumber(redis.call('GET', k) or '0') < v then
    redis.call('SET', k, ARGV[i+1])
    if bsecs > 0 then redis.call('EXPIRE', k, bsecs + 86400) end
    raised = raised + 1
  end
end
return raised
"""
