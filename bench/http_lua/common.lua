-- Shared by bench/http.py's wrk scripts: thread ids, counting responses by status, and `done`,
-- which prints one line "BENCH_JSON {...}" that bench/http.py parses.

wrk.headers["Content-Type"] = "application/json"

local threads = {}

-- Runs in the main Lua state before each thread's init(): gives every thread a distinct id.
function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

-- Per-thread counters (each thread has its own Lua state; done() reads them with thread:get).
non2xx = 0
statuses = {}
sample_status = nil
sample_body = nil
accepted = 0
duplicates = 0
rejected = 0

-- Scripts set this to a function(body) that adds to accepted/duplicates/rejected.
count_body = nil

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
      if sample_status == nil then
         sample_status = status
         sample_body = string.sub(body or "", 1, 500)
      end
   elseif count_body ~= nil then
      count_body(body)
   end
end

local function encode(value)
   local kind = type(value)
   if kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then
         return "null"
      end
      return string.format("%.17g", value)
   elseif kind == "string" then
      local escaped = value:gsub('[%c"\\]', function(c)
         return string.format("\\u%04x", string.byte(c))
      end)
      return '"' .. escaped .. '"'
   elseif kind == "table" then
      local parts = {}
      for k, v in pairs(value) do
         table.insert(parts, encode(tostring(k)) .. ":" .. encode(v))
      end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif kind == "boolean" then
      return tostring(value)
   end
   return "null"
end

function done(summary, latency, requests)
   local total = { non2xx = 0, accepted = 0, duplicates = 0, rejected = 0 }
   local by_status = {}
   local sample = nil
   for _, t in ipairs(threads) do
      for _, name in ipairs({ "non2xx", "accepted", "duplicates", "rejected" }) do
         total[name] = total[name] + (t:get(name) or 0)
      end
      for status, n in pairs(t:get("statuses") or {}) do
         by_status[status] = (by_status[status] or 0) + n
      end
      if sample == nil and t:get("sample_status") ~= nil then
         sample = { status = t:get("sample_status"), body = t:get("sample_body") }
      end
   end
   local e = summary.errors
   local ms = function(us) return us / 1000.0 end
   local out = {
      requests = summary.requests,
      duration_s = summary.duration / 1e6,
      bytes = summary.bytes,
      latency_ms = {
         p50 = ms(latency:percentile(50)),
         p90 = ms(latency:percentile(90)),
         p99 = ms(latency:percentile(99)),
         max = ms(latency.max),
         mean = ms(latency.mean),
      },
      non2xx = total.non2xx,
      statuses = by_status,
      socket_errors = { connect = e.connect, read = e.read, write = e.write, timeout = e.timeout },
      accepted = total.accepted,
      duplicates = total.duplicates,
      rejected = total.rejected,
      error_sample = sample,
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end
