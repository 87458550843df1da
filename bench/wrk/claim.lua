-- `GET /task` only: claims that are never reported, so claimed-but-unreported tasks pile up.
--
-- Give wrk the URL of /task itself. Meant for one thread (-t1). It counts claims per
-- wall-clock second (os.time) and notes the monotonic clock at every `mark_every`-th claim,
-- so that throughput can be read against the number of tasks claimed so far.
--
-- Arguments (after `--`), each key=value:
--   stop_after=N   after N claims, stop sending and print AGL_WRK_STOP (the bench then
--                  ends wrk with SIGINT, which still runs done()); 0: never
--   mark_every=N   note the clock every N claims (default 1000)
--   live=1         as each wall-clock second ends, print `AGL_WRK_SECOND <epoch second>
--                  <claims>` (noticed at the first claim after it, so quiet seconds are
--                  skipped), for a bench that watches the run as it goes
--
-- done() prints `AGL_WRK_RESULT {...}` (result.lua) with the counts, `marks` as [claims,
-- seconds] pairs and `per_second` as [epoch second, claims] pairs.

package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local result = require("result")  -- done()'s line (result.lua)
setup = result.setup

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } agl_bench_timespec;
int clock_gettime(int clock_id, agl_bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("agl_bench_timespec")

local function now()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

-- read by done() through thread:get
stop_after, mark_every, live = 0, 1000, 0
claims, empty, unexpected, non2xx = 0, 0, 0, 0
started = 0
marks = {}       -- marks[i] = clock when claim i * mark_every was answered
per_second = {}  -- per_second[os.time()] = claims answered in that second
local current_second = nil

function init(args)
   for _, arg in ipairs(args) do
      local key, value = arg:match("^([%w_]+)=(%d+)$")
      assert(key, "expected key=value, got " .. arg)
      if key == "stop_after" then
         stop_after = tonumber(value)
      elseif key == "mark_every" then
         mark_every = math.max(1, tonumber(value))
      elseif key == "live" then
         live = tonumber(value)
      else
         error("unknown argument " .. key)
      end
   end
   started = now()
end

function response(status, headers, body)
   if status ~= 200 then
      non2xx = non2xx + 1
   elseif body:find('"is_available"%s*:%s*true') then
      claims = claims + 1
      local second = os.time()
      if second ~= current_second then
         if live ~= 0 and current_second then
            io.write(string.format("AGL_WRK_SECOND %d %d\n", current_second, per_second[current_second]))
            io.flush()
         end
         current_second = second
      end
      per_second[second] = (per_second[second] or 0) + 1
      if claims % mark_every == 0 then
         marks[#marks + 1] = now()
      end
      if claims == stop_after then
         wrk.thread:stop()
         io.write("AGL_WRK_STOP\n")
         io.flush()
      end
   elseif body:find('"is_available"', 1, true) then
      empty = empty + 1  -- the queue ran dry
   else
      unexpected = unexpected + 1
   end
end

function done(summary, latency)
   local thread = result.threads[1]
   local start = thread:get("started")
   local every = thread:get("mark_every")
   local parts = {}
   for i, clock in ipairs(thread:get("marks")) do
      parts[#parts + 1] = string.format("[%.0f,%.6f]", i * every, clock - start)
   end
   local marks_json = table.concat(parts, ",")
   local seconds = {}
   local counts = thread:get("per_second")
   for second in pairs(counts) do
      seconds[#seconds + 1] = second
   end
   table.sort(seconds)
   parts = {}
   for _, second in ipairs(seconds) do
      parts[#parts + 1] = string.format("[%.0f,%.0f]", second, counts[second])
   end
   local extra = string.format('"marks":[%s],"per_second":[%s]', marks_json, table.concat(parts, ","))
   result.write(summary, latency, { "claims", "empty", "unexpected", "non2xx" }, extra)
end
