-- Placeholder on branch s15-audit: version 0014 belongs to another change of issue #15.
-- Delete this file when merging; the real migration takes its number.
SELECT 1;
