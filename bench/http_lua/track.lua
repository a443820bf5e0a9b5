-- POST /track-event, one view per request: a unique eventId per request (run tag, thread, counter),
-- a random known user and an item drawn with a popularity skew.
-- Arguments (after `--`): run tag, number of users, user id format, number of items, item id format.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local tag, n_users, user_fmt, n_items, item_fmt
local counter = 0

function init(args)
   tag = args[1]
   n_users = tonumber(args[2])
   user_fmt = args[3]
   n_items = tonumber(args[4])
   item_fmt = args[5]
   math.randomseed(os.time() * 1000 + tid)
end

function request()
   counter = counter + 1
   local user = string.format(user_fmt, math.random(0, n_users - 1))
   -- r^2 puts more views on low item indexes, like a catalog's head; synth's ids are not ranked by
   -- popularity, so this is only a skew, not the synthetic shop's distribution.
   local item = string.format(item_fmt, math.floor(n_items * math.random() ^ 2))
   local body = string.format(
      '{"eventType":"view","productId":"%s","userId":"%s","eventId":"%s-%d-%d"}',
      item, user, tag, tid, counter
   )
   return wrk.format("POST", "/track-event", nil, body)
end

count_body = function(body)
   if string.find(body, '"duplicate"', 1, true) then
      duplicates = duplicates + 1
   else
      accepted = accepted + 1
   end
end
