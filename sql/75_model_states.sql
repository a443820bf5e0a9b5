-- Shadow state: a model whose parameters shape derived state (weights, windows, similarity) gets
-- its own copy of that state, built from the event log in a schema of its own while the active
-- model keeps serving, and kept current by the same events afterwards. Promotion swaps the two
-- table sets in one short transaction; the state of the model it replaces stays live in the
-- shadow schema, so a rollback is the same swap back.
--
-- A shadow schema holds its own settings, fold_state, event_inbox and derived tables (the
-- tables below), a view of the event types with the model's weights, and copies of the fold and
-- query functions whose references to those tables and functions point into the schema. The
-- events trigger queues every inserting statement for each shadow as well (the ingest cost of a
-- live version); the folder folds shadows after the active state, and never waits for one that
-- is being built.

-- The tables a shadow schema has its own copy of (and that promotion swaps), and the functions it
-- has its own copy of. Everything else (events, items, embeddings, keys, logs) is shared.
create function recsql._state_tables() returns text[]
language sql immutable parallel safe as $$
    select array['settings', 'fold_state', 'event_inbox', 'user_item_events', 'item_event_counts',
                 'item_stats', 'item_pairs', 'pair_queue', 'neighbor_lists', 'neighbor_dirty', 'user_windows']
$$;

comment on function recsql._state_tables() is 'Tables each model state has its own copy of; promotion swaps them';

create function recsql._state_functions() returns text[]
language sql immutable parallel safe as $$
    select array[
        -- folding
        '_batch_resolve_items', '_windows_key', '_batch_add_context', '_save_windows', '_pairs_lock_key', '_pair_part_lock_key', '_pair_delta',
        '_merge_pair_delta', '_pair_b_index', '_drop_pair_b_index', '_restore_pair_b_index',
        '_apply_pairs', '_drain_pair_queue', '_apply_stats', 'fold', 'fold_pairs', 'refresh_neighbors', 'flush',
        'mark_all_neighbors', 'rebuild', '_forget_state', 'maintain', 'state_digest',
        -- queries, so that a candidate can serve an online test from its own state
        '_pair_scores', '_user_sources', '_rank', 'recommend', 'session_recommend', '_neighbors',
        '_similar', 'similar_items', 'bought_together', '_trending_score', 'trending', 'explain']
$$;

comment on function recsql._state_functions() is 'Functions each model state has its own copy of, bound to its tables';

-- The schema of a model's state: a stable name no model name can break.
create function recsql._state_schema(p_model text) returns text
language sql immutable parallel safe as $$
    select 'recsql_state_' || substr(md5(p_model), 1, 12)
$$;

comment on function recsql._state_schema(text) is 'Name of the shadow schema holding a model''s state';

-- (Re)creates a state's copies of recsql's functions: references to the state's tables and
-- functions are moved into its schema, and lines marked "main only" (the loops over model states)
-- are left out. Also run by migrations that change one of those functions.
create function recsql._copy_state_functions(p_schema text) returns void
language plpgsql as $$
declare
    v_names text;
    v_fn record;
    v_body text;
begin
    v_names := array_to_string(recsql._state_tables() || array['event_types', '_fold_lock_key']
                               || recsql._state_functions(), '|');
    for v_fn in
        select p.oid from pg_proc p
        where p.pronamespace = 'recsql'::regnamespace and p.proname = any (recsql._state_functions())
    loop
        v_body := regexp_replace(pg_get_functiondef(v_fn.oid), '\mrecsql\.(' || v_names || ')\M',
                                 quote_ident(p_schema) || '.\1', 'g');
        v_body := regexp_replace(v_body, '\n[^\n]*-- main only[^\n]*', '', 'g');
        execute v_body;
    end loop;
end
$$;

comment on function recsql._copy_state_functions(text) is
    'Creates or replaces a model state''s copies of the fold and query functions, bound to its schema';

-- Creates a model's shadow schema, empty and registered (events are queued for it from the
-- commit on); recsql.build_model_state() fills it.
create function recsql._create_state(p_model text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
    v_params jsonb;
    v_schema text := recsql._state_schema(p_model);
    v_table text;
    v_def record;
    v_key text;
begin
    select * into v_model from recsql.models where name = p_model;
    if not found then
        raise exception 'no model "%"', p_model using errcode = '42704', hint = 'recsql models list shows them';
    end if;
    if v_model.status = 'active' then
        raise exception 'model "%" is active: its state is recsql''s own', p_model using errcode = '22023';
    end if;
    if exists (select 1 from recsql.model_states where model = p_model) then
        raise exception 'model "%" already has its state (schema %)', p_model, v_schema using errcode = '42710',
            hint = 'recsql.drop_model_state() removes it.';
    end if;
    if (select count(*) from recsql.model_states) >= 3 then
        raise exception 'at most three model states besides the active one: each costs ingest time and storage'
            using errcode = '54000', hint = 'Drop one with recsql.drop_model_state(model).';
    end if;
    v_params := recsql.check_params(v_model.params);
    -- Events of statements that commit from now on are queued for the new state (the trigger reads
    -- this table); the lock waits for statements already inserting, so none is missed.
    lock table recsql.events in share mode;
    insert into recsql.model_states (model, schema_name, weights) values (p_model, v_schema, v_params -> 'weights');

    execute format('create schema %I', v_schema);
    execute format('comment on schema %I is %L', v_schema, format('recsql: derived state of model %s', p_model));
    foreach v_table in array recsql._state_tables() loop
        execute format('create table %I.%I (like recsql.%I including defaults including constraints'
                       ' including generated including storage including comments)', v_schema, v_table, v_table);
        -- Keys and indexes keep their names, so that a swapped-in table is indistinguishable.
        for v_def in
            select c.conname, pg_get_constraintdef(c.oid) as def
            from pg_constraint c
            where c.conrelid = format('recsql.%I', v_table)::regclass and c.contype in ('p', 'u')
        loop
            execute format('alter table %I.%I add constraint %I %s', v_schema, v_table, v_def.conname, v_def.def);
        end loop;
        for v_def in
            select pg_get_indexdef(i.indexrelid) as def
            from pg_index i
            where i.indrelid = format('recsql.%I', v_table)::regclass
              and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)
        loop
            execute replace(v_def.def, format(' ON recsql.%s ', v_table),
                            format(' ON %I.%I ', v_schema, v_table));
        end loop;
    end loop;
    -- Settings: the active ones, then the model's parameters; the fold state: where the active
    -- state's pair expiry stands (the rebuild replays the same window of formations).
    execute format('insert into %I.settings select * from recsql.settings', v_schema);
    for v_key in select m.key from recsql.model_parameters m where m.key <> 'weights' loop
        execute format('update %I.settings set %I = ($1 ->> %L)::%s', v_schema, v_key, v_key,
                       (select format_type(a.atttypid, a.atttypmod) from pg_attribute a
                        where a.attrelid = 'recsql.settings'::regclass and a.attname = v_key))
        using v_params;
    end loop;
    execute format('insert into %I.fold_state (cooc_horizon) select cooc_horizon from recsql.fold_state', v_schema);
    -- Event types: the shared vocabulary with this state's weights.
    execute format(
        'create view %I.event_types as select %s from recsql.event_types t'
        ' cross join recsql.model_states ms where ms.schema_name = %L',
        v_schema,
        (select string_agg(case when a.attname = 'weight'
                                then 'coalesce((ms.weights ->> t.name)::double precision, t.weight) as weight'
                                else format('t.%I', a.attname) end, ', ' order by a.attnum)
         from pg_attribute a
         where a.attrelid = 'recsql.event_types'::regclass and a.attnum > 0 and not a.attisdropped),
        v_schema);
    execute format('create function %I._fold_lock_key() returns bigint language sql immutable parallel safe'
                   ' as %L', v_schema, format('select %s::bigint', hashtextextended(v_schema, 0)));
    perform recsql._copy_state_functions(v_schema);
    return v_schema;
end
$$;

comment on function recsql._create_state(text) is
    'Creates and registers a model''s empty shadow schema (tables, weights view, function copies)';

-- Builds a model's state from the event log, then keeps it live. A procedure: the schema is
-- created and registered in one transaction (live events queue for it from then on), and filled
-- from the log in a second, so the active model's folding never waits for the build.
create procedure recsql.build_model_state(p_model text)
language plpgsql as $$
declare
    v_schema text;
    v_started timestamptz;
    v_n bigint;
begin
    v_schema := recsql._create_state(p_model);
    commit;
    v_started := clock_timestamp();
    execute format('select %I.rebuild()', v_schema) into v_n;
    update recsql.model_states
    set status = 'live', built_at = now(),
        build_seconds = extract(epoch from clock_timestamp() - v_started), built_events = v_n
    where model = p_model;
    commit;
end
$$;

comment on procedure recsql.build_model_state(text) is
    'Builds a model''s shadow state from the event log (CALL it outside a transaction block); it stays live';

-- Removes a model's shadow state.
create function recsql.drop_model_state(p_model text) returns boolean
language plpgsql as $$
declare
    v_schema text;
begin
    delete from recsql.model_traffic t where t.model = p_model;
    delete from recsql.model_states where model = p_model returning schema_name into v_schema;
    if v_schema is null then
        return false;
    end if;
    execute format('drop schema %I cascade', v_schema);
    return true;
end
$$;

comment on function recsql.drop_model_state(text) is 'Drops a model''s shadow state (and ends its online test); false when it had none';

-- Folds every live shadow state a little, as the folder does for the active one; a state being
-- built (or folded by another session) is skipped. Returns the events folded.
create function recsql.fold_states(max_lists integer default null) returns bigint
language plpgsql as $$
declare
    v_state record;
    v_n bigint := 0;
    v_folded bigint;
    v_locked boolean;
begin
    for v_state in select schema_name from recsql.model_states where status = 'live' order by model loop
        execute format('select pg_try_advisory_xact_lock(%I._fold_lock_key())', v_state.schema_name) into v_locked;
        continue when not v_locked;
        execute format('select %I.fold()', v_state.schema_name) into v_folded;
        execute format('select %I.refresh_neighbors($1)', v_state.schema_name) using max_lists;
        v_n := v_n + v_folded;
    end loop;
    return v_n;
end
$$;

comment on function recsql.fold_states(integer) is
    'Folds each live shadow state and refreshes up to max_lists of its neighbour lists; returns the events folded';

-- recsql.maintain() for each live shadow state (expiry of old pair formations, popularity range).
create function recsql._maintain_states() returns void
language plpgsql as $$
declare
    v_state record;
    v_locked boolean;
begin
    for v_state in select schema_name from recsql.model_states where status = 'live' order by model loop
        execute format('select pg_try_advisory_xact_lock(%I._fold_lock_key())', v_state.schema_name) into v_locked;
        continue when not v_locked;
        execute format('select count(*) from %I.maintain()', v_state.schema_name);
    end loop;
end
$$;

comment on function recsql._maintain_states() is 'Runs maintain() in every live shadow state that is not busy';

-- Swaps the active state with a model's shadow state in the caller's transaction: the tables
-- change schemas (readers of the old ones wait for the commit, then read the new ones), views
-- over them are re-pointed, and the shadow schema keeps the replaced state for a rollback.
create function recsql._swap_state(p_schema text) returns void
language plpgsql
-- View definitions are read and re-created fully qualified.
set search_path = pg_catalog
as $$
declare
    v_table text;
    v_views text[][];
    v_view text[];
    v_keep text;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    execute format('select pg_advisory_xact_lock(%I._fold_lock_key())', p_schema);
    -- Both states fold everything committed, so the swap loses no queued work and the new state
    -- is as fresh as the old.
    perform recsql.fold();
    execute format('select %I.flush()', p_schema);
    -- Views bind to tables, not names: remember every view reading a swapped table.
    select coalesce(array_agg(array[format('%I.%I', vn.nspname, v.relname), pg_get_viewdef(v.oid)]), '{}')
    into v_views
    from (select distinct r.ev_class as oid
          from pg_depend d
          join pg_rewrite r on r.oid = d.objid
          where d.classid = 'pg_rewrite'::regclass
            and d.refclassid = 'pg_class'::regclass
            and d.refobjid in (select format('recsql.%I', t)::regclass from unnest(recsql._state_tables()) t)
            and r.ev_class not in (select format('recsql.%I', t)::regclass from unnest(recsql._state_tables()) t)) x
    join pg_class v on v.oid = x.oid and v.relkind = 'v'
    join pg_namespace vn on vn.oid = v.relnamespace;
    -- Settings that are not model parameters stay as the operator set them (the decay epoch goes
    -- with the popularity it is the reference of).
    select string_agg(format('%1$I = o.%1$I', a.attname), ', ') into v_keep
    from pg_attribute a
    where a.attrelid = 'recsql.settings'::regclass and a.attnum > 0 and not a.attisdropped
      and a.attname not in ('id', 'decay_epoch')
      and a.attname not in (select key from recsql.model_parameters);
    if v_keep is not null then
        execute format('update %I.settings n set %s from recsql.settings o', p_schema, v_keep);
    end if;
    execute 'create schema recsql_swap';
    foreach v_table in array recsql._state_tables() loop
        execute format('alter table recsql.%I set schema recsql_swap', v_table);
        execute format('alter table %I.%I set schema recsql', p_schema, v_table);
        execute format('alter table recsql_swap.%I set schema %I', v_table, p_schema);
    end loop;
    execute 'drop schema recsql_swap';
    foreach v_view slice 1 in array v_views loop
        execute format('create or replace view %s as %s', v_view[1], v_view[2]);
    end loop;
end
$$;

comment on function recsql._swap_state(text) is
    'Exchanges the active derived tables with those of a shadow schema, in the caller''s transaction';
