-- uses: bodies
-- Removes a spooled body and gives its bytes back.
-- KEYS[1] body (for a cluster's routing). ARGV[4] id, ARGV[5] kind.
drop_body(ARGV[4], ARGV[5])
return 0
