-- Builds option_features: one row per episode_options row (staged as feature_source_options), the
-- features of sql/features/create_feature_rows.sql.
create or replace table option_features as
select * from feature_rows
