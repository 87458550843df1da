-- What every script here prints when wrk is done: one line, `AGL_WRK_RESULT {...}`, with
-- wrk's own figures and the script's counts. A script loads it with
--
--   package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
--   local result = require("result")
--   setup = result.setup
--
-- and ends with `function done(summary, latency) result.write(summary, latency, {...}) end`.
--
-- The line's members: duration_us, requests, bytes, socket_errors (connect, read, write,
-- timeout), status_errors, latency_us (p50, p90, p99, max, mean; microseconds over every
-- request), then each count the script names, summed over wrk's threads, then `extra`.

local result = {}

result.threads = {}  -- every thread wrk made, in order: done() reads their globals

function result.setup(thread)
   result.threads[#result.threads + 1] = thread
end

-- `counts`: names of numeric globals each thread keeps. `extra`: more members, as JSON
-- text without the braces ('"marks":[...]'), or nil.
function result.write(summary, latency, counts, extra)
   local members = {}
   for _, name in ipairs(counts) do
      local total = 0
      for _, thread in ipairs(result.threads) do
         total = total + thread:get(name)
      end
      members[#members + 1] = string.format('"%s":%.0f', name, total)
   end
   members[#members + 1] = extra
   local e = summary.errors
   io.write(string.format(
      'AGL_WRK_RESULT {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
      '"socket_errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"timeout":%.0f},"status_errors":%.0f,' ..
      '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,"mean":%.1f}%s}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      #members > 0 and ("," .. table.concat(members, ",")) or ""))
end

return result
