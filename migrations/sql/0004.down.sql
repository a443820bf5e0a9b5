-- Undo 0004.
drop function recsql.previous_model();
drop function recsql.promote_model(text);
drop function recsql.promotion_gate(text, text, integer);
drop table recsql.evaluations;
drop function recsql.apply_params(jsonb);
drop function recsql._apply_params_to(jsonb, boolean);
drop function recsql.check_params(jsonb, jsonb);
drop function recsql.current_params();
drop table recsql.model_parameters;
drop table recsql.models;
