-- wrk script: POST /orders/<id>/pay with a fresh order id on every request, so that every
-- request locks a key of its own (distinct keys, no contention between requests).
--
--   wrk -t2 -c32 -d10s -s benches/wrk/pay.lua http://127.0.0.1:3000
--
-- Ids are <6 digits of the start time><2-digit thread number><9-digit request counter>: unique
-- across the threads of a run and across runs against one server, and within u64.

local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("thread_number", threads)
end

function init(args)
    prefix = string.format("%06d%02d", os.time() % 1000000, thread_number or 0)
    requests = 0
end

function request()
    requests = requests + 1
    return wrk.format("POST", "/orders/" .. prefix .. string.format("%09d", requests) .. "/pay")
end
