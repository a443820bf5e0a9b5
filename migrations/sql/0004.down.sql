-- Undo 0004.
drop table recsql.evaluations;
drop function recsql.apply_params(jsonb);
drop function recsql._apply_params_to(jsonb, boolean);
drop function recsql.check_params(jsonb, jsonb);
drop function recsql.current_params();
drop table recsql.model_parameters;
drop table recsql.models;
