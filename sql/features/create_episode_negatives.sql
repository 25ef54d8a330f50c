-- Temp table episode_negatives (empty): filled batch by batch by insert_episode_negatives_batch.sql.
create or replace temp table episode_negatives (eidx integer, negatives integer[])
