-- Model versions and offline evaluations. A model is a named, immutable set of parameters: the
-- knobs of recsql.settings that shape recommendations, and the event-type weights.

create table recsql.models (
    name text constraint models_pkey primary key
        constraint models_name_check check (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    params jsonb not null constraint models_params_check check (jsonb_typeof(params) = 'object'),
    status text not null default 'candidate'
        constraint models_status_check check (status in ('candidate', 'active', 'retired')),
    description text not null default '',
    created_at timestamptz not null default now(),
    promoted_at timestamptz,
    retired_at timestamptz
);

-- Exactly one active model at a time (the seed below makes it one, never zero).
create unique index models_one_active_idx on recsql.models ((true)) where status = 'active';

comment on table recsql.models is 'Model versions: immutable parameter sets, one active, candidates and retired ones';

-- Every key a model may set, its type, and whether it shapes derived state (needs a rebuild).
create table recsql.model_parameters (
    key text constraint model_parameters_pkey primary key,
    kind text not null constraint model_parameters_kind_check check (kind in ('integer', 'number', 'text', 'interval', 'weights')),
    shapes_state boolean not null,
    description text not null
);

insert into recsql.model_parameters (key, kind, shapes_state, description) values
    ('weights', 'weights', true, 'weight per event type, e.g. {"view": 1, "purchase": 5}'),
    ('cooc_window', 'integer', true, 'pair an event with the user''s previous N pair-forming events (1..200)'),
    ('purchase_window', 'integer', true, 'bought-together window over conversions (1..200)'),
    ('trending_half_life', 'interval', true, 'half-life of trending popularity, e.g. "2 days"'),
    ('min_support', 'integer', true, 'ignore pairs seen fewer times (>= 1)'),
    ('neighbors_per_item', 'integer', true, 'length of each neighbour list (1..1000)'),
    ('similarity', 'text', true, 'cosine, jaccard or count'),
    ('history_length', 'integer', false, 'recent events of a user that recommend() reads (1..10000)'),
    ('history_half_life', 'number', false, 'recency half-life over those events, in events (> 0)'),
    ('embedding_weight', 'number', false, 'share of embedding similarity in hybrid scores (0..1)'),
    ('new_item_slots', 'integer', false, 'last places of a list open to new items without co-occurrence (0..10)'),
    ('new_item_window', 'interval', false, 'how recently an item was added to count as new, e.g. "14 days"'),
    ('new_item_min_similarity', 'number', false, 'least embedding similarity to the taste for a new item (-1..1)');

comment on table recsql.model_parameters is 'The parameters a model version may set; shapes_state ones need derived state rebuilt';

-- Shadow state of non-active models (see 75_model_states.sql).
create table recsql.model_states (
    model text constraint model_states_pkey primary key
        constraint model_states_model_fkey references recsql.models (name) on update cascade,
    schema_name text not null constraint model_states_schema_name_key unique,
    weights jsonb not null,
    status text not null default 'building'
        constraint model_states_status_check check (status in ('building', 'live')),
    created_at timestamptz not null default now(),
    built_at timestamptz,
    build_seconds double precision,
    built_events bigint
);

comment on table recsql.model_states is
    'Shadow state of model versions other than the active one: their schema, event-type weights and build status';

-- The parameters in force now, as a model's params document.
create function recsql.current_params() returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'weights', (select jsonb_object_agg(t.name, t.weight order by t.name) from recsql.event_types t),
        'cooc_window', s.cooc_window,
        'purchase_window', s.purchase_window,
        'trending_half_life', s.trending_half_life::text,
        'min_support', s.min_support,
        'neighbors_per_item', s.neighbors_per_item,
        'similarity', s.similarity,
        'history_length', s.history_length,
        'history_half_life', s.history_half_life,
        'embedding_weight', s.embedding_weight,
        'new_item_slots', s.new_item_slots,
        'new_item_window', s.new_item_window::text,
        'new_item_min_similarity', s.new_item_min_similarity)
    from recsql.settings s
$$;

comment on function recsql.current_params() is 'The parameters in force (settings and event-type weights) as a params document';

-- Validates a params document against recsql.model_parameters and the settings' own checks, and
-- returns it complete (keys not given are taken from p_base). Rejections say what to change.
create function recsql.check_params(p_params jsonb, p_base jsonb default null) returns jsonb
language plpgsql as $$
declare
    v_base jsonb := coalesce(p_base, recsql.current_params());
    v_key text;
    v_value jsonb;
    v_kind text;
    v_out jsonb;
    v_constraint text;
begin
    if p_params is null or jsonb_typeof(p_params) <> 'object' then
        raise exception 'model parameters must be a JSON object' using errcode = '22023';
    end if;
    for v_key, v_value in select * from jsonb_each(p_params) loop
        select kind into v_kind from recsql.model_parameters where key = v_key;
        if v_kind is null then
            raise exception 'unknown model parameter "%"', v_key
                using errcode = '22023',
                      hint = format('Parameters: %s.', (select string_agg(key, ', ' order by key) from recsql.model_parameters));
        end if;
        if v_kind = 'weights' then
            if jsonb_typeof(v_value) <> 'object' then
                raise exception 'weights must be an object of event type -> number, got %', v_value using errcode = '22023';
            end if;
            perform 1 from jsonb_each(v_value) w
            where not exists (select 1 from recsql.event_types t where t.name = w.key);
            if found then
                raise exception 'weights name an unknown event type: %',
                    (select string_agg(w.key, ', ') from jsonb_each(v_value) w
                     where not exists (select 1 from recsql.event_types t where t.name = w.key))
                    using errcode = '22023',
                          hint = format('Known types: %s.', (select string_agg(name, ', ' order by name) from recsql.event_types));
            end if;
            perform 1 from jsonb_each(v_value) w
            where jsonb_typeof(w.value) <> 'number' or (w.value::text)::double precision not between -1000 and 1000;
            if found then
                raise exception 'each weight must be a number between -1000 and 1000' using errcode = '22023';
            end if;
        elsif v_kind in ('integer', 'number') and jsonb_typeof(v_value) <> 'number' then
            raise exception '% must be a number, got %', v_key, v_value using errcode = '22023';
        elsif v_kind = 'integer' and (v_value::text)::numeric <> trunc((v_value::text)::numeric) then
            raise exception '% must be a whole number, got %', v_key, v_value using errcode = '22023';
        elsif v_kind in ('text', 'interval') and jsonb_typeof(v_value) <> 'string' then
            raise exception '% must be a string, got %', v_key, v_value using errcode = '22023';
        end if;
    end loop;
    v_out := v_base || (p_params - 'weights')
        || jsonb_build_object('weights', coalesce(v_base -> 'weights', '{}') || coalesce(p_params -> 'weights', '{}'));
    -- The settings table's own constraints decide the ranges, so there is one rule for both.
    begin
        perform recsql._apply_params_to(v_out, false);
    exception when check_violation or invalid_datetime_format or invalid_text_representation
                   or numeric_value_out_of_range then
        get stacked diagnostics v_constraint = constraint_name;
        v_key := substring(v_constraint from '^settings_(.*)_check$');
        if v_key is not null then
            raise exception '% = % is out of range: %', v_key, v_out -> v_key,
                (select description from recsql.model_parameters where key = v_key)
                using errcode = '22023';
        end if;
        raise exception 'invalid model parameters: %', sqlerrm using errcode = '22023';
    end;
    return v_out;
end
$$;

comment on function recsql.check_params(jsonb, jsonb) is
    'Validates model parameters (unknown keys, types, ranges) and returns them completed from the base';

-- Writes a params document into settings and event_types; with p_keep = false it is a dry run that
-- only lets the constraints judge it (the caller's subtransaction is rolled back by raising).
create function recsql._apply_params_to(p_params jsonb, p_keep boolean) returns void
language plpgsql as $$
begin
    update recsql.settings set
        cooc_window = (p_params ->> 'cooc_window')::integer,
        purchase_window = (p_params ->> 'purchase_window')::integer,
        trending_half_life = (p_params ->> 'trending_half_life')::interval,
        min_support = (p_params ->> 'min_support')::integer,
        neighbors_per_item = (p_params ->> 'neighbors_per_item')::integer,
        similarity = p_params ->> 'similarity',
        history_length = (p_params ->> 'history_length')::integer,
        history_half_life = (p_params ->> 'history_half_life')::double precision,
        embedding_weight = (p_params ->> 'embedding_weight')::double precision,
        new_item_slots = (p_params ->> 'new_item_slots')::integer,
        new_item_window = (p_params ->> 'new_item_window')::interval,
        new_item_min_similarity = (p_params ->> 'new_item_min_similarity')::double precision;
    update recsql.event_types t set weight = (w.value::text)::double precision
    from jsonb_each(p_params -> 'weights') w
    where t.name = w.key and t.weight is distinct from (w.value::text)::double precision;
    if not p_keep then
        raise exception using errcode = 'P0004', message = 'dry run';
    end if;
exception when assert_failure then
    return;  -- the dry run's own exit: every change above is undone
end
$$;

comment on function recsql._apply_params_to(jsonb, boolean) is
    'Writes parameters into settings and event_types (p_keep = false: check them against the constraints only)';

-- The state-shaping parameters two params documents disagree on, comma-separated (null: none).
-- One rule for what needs derived state of its own: apply_params, set_traffic and the CLI ask it.
create function recsql._shaping_changes(p_from jsonb, p_to jsonb) returns text
language sql stable as $$
    select string_agg(m.key, ', ' order by m.key)
    from recsql.model_parameters m
    where m.shapes_state and (p_from -> m.key) is distinct from (p_to -> m.key)
$$;

comment on function recsql._shaping_changes(jsonb, jsonb) is
    'State-shaping parameters that differ between two params documents, or null';

-- Applies a params document to this database: settings, weights, and the derived state they shape.
create function recsql.apply_params(p_params jsonb) returns text
language plpgsql as $$
declare
    v_before jsonb := recsql.current_params();
    v_params jsonb := recsql.check_params(p_params, v_before);
    v_state_changed boolean;
begin
    v_state_changed := recsql._shaping_changes(v_before, v_params) is not null;
    perform recsql._apply_params_to(v_params, true);
    if v_state_changed then
        perform recsql.rebuild();
        return 'rebuilt';
    end if;
    return 'applied';
end
$$;

comment on function recsql.apply_params(jsonb) is
    'Puts parameters in force; rebuilds derived state when a state-shaping one changed. Returns applied or rebuilt';

create table recsql.evaluations (
    run_id uuid not null,
    model text not null,
    metric text not null,
    k integer not null,
    value double precision,
    split text not null,
    data_fingerprint text not null,
    params jsonb,
    users integer not null,
    created_at timestamptz not null default now(),
    constraint evaluations_pkey primary key (run_id, model, metric, k)
);

create index evaluations_model_idx on recsql.evaluations (model, created_at);

comment on table recsql.evaluations is
    'Offline evaluation results: one row per run, model, metric and k, with the split and a fingerprint of the data';

-- The model in force when the schema is installed.
insert into recsql.models (name, params, status, description, promoted_at)
values ('default', recsql.current_params(), 'active', 'the built-in defaults', now());

-- The newest offline evaluation that scored both models on the same data, on one metric.
create function recsql.promotion_gate(p_candidate text, p_metric text default 'ndcg', p_k integer default 10)
returns table (run_id uuid, evaluated_at timestamptz, active text, active_value double precision,
               candidate_value double precision)
language sql stable as $$
    select c.run_id, c.created_at, a.model, a.value, c.value
    from recsql.evaluations c
    join recsql.evaluations a on a.run_id = c.run_id and a.metric = c.metric and a.k = c.k
    join recsql.models m on m.name = a.model and m.status = 'active'
    where c.model = p_candidate and c.metric = p_metric and c.k = p_k
    order by c.created_at desc
    limit 1
$$;

comment on function recsql.promotion_gate(text, text, integer) is
    'The latest evaluation comparing a candidate with the active model on one metric';

-- Makes a model the active one in one transaction: its parameters take effect, the previous active
-- model is retired and kept for rollback. Derived state: a model with a built shadow state
-- (recsql.build_model_state) swaps it in; otherwise it is rebuilt here when the parameters shape it.
create function recsql.promote_model(p_name text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
    v_active recsql.models;
    v_state recsql.model_states;
    v_how text;
begin
    -- One promotion at a time; readers are not blocked by this lock.
    lock table recsql.models in share row exclusive mode;
    select * into v_model from recsql.models where name = p_name;
    if not found then
        raise exception 'no model "%"', p_name using errcode = '42704',
            hint = 'recsql models list shows them';
    end if;
    if v_model.status = 'active' then
        return 'already active';
    end if;
    select * into v_state from recsql.model_states where model = p_name;
    if v_state.status = 'building' then
        raise exception 'the state of model "%" is still being built', p_name using errcode = '55000',
            hint = 'Promote it when recsql.build_model_state() has finished.';
    end if;
    delete from recsql.model_traffic;  -- a test compares candidates with the active model: it ends here
    select * into v_active from recsql.models where status = 'active';
    if v_state.schema_name is not null then
        -- The candidate's own state becomes the active one; the replaced state stays in the shadow
        -- schema, live, as the retired model's (a rollback swaps it back).
        perform recsql._swap_state(v_state.schema_name);
        perform recsql._apply_params_to(recsql.check_params(v_model.params), true);
        update recsql.model_states
        set model = v_active.name, weights = recsql.check_params(v_active.params) -> 'weights',
            built_at = now(), build_seconds = null, built_events = null
        where schema_name = v_state.schema_name;
        v_how := 'swapped';
    else
        v_how := recsql.apply_params(v_model.params);
    end if;
    update recsql.models set status = 'retired', retired_at = now() where status = 'active';
    update recsql.models set status = 'active', promoted_at = now(), retired_at = null where name = p_name;
    -- Only the model just replaced keeps a state for rollback: older retired states stop costing ingest.
    perform recsql.drop_model_state(st.model)
    from recsql.model_states st join recsql.models m on m.name = st.model
    where m.status = 'retired' and m.name <> v_active.name;
    return v_how;
end
$$;

comment on function recsql.promote_model(text) is
    'Puts a model in force and makes it active in one transaction (swapping in its shadow state, or rebuilding)';

-- The model that was active before the current one.
create function recsql.previous_model() returns text
language sql stable as $$
    select name from recsql.models where status = 'retired' and promoted_at is not null
    order by retired_at desc nulls last, promoted_at desc limit 1
$$;

comment on function recsql.previous_model() is 'The most recently retired model that was once active (rollback target)';

-- Online A/B: candidates that take a share of users; the active model serves everyone else.
create table recsql.model_traffic (
    model text constraint model_traffic_pkey primary key
        constraint model_traffic_model_fkey references recsql.models (name),
    share double precision not null constraint model_traffic_share_check check (share > 0 and share < 1),
    started_at timestamptz not null default now()
);

comment on table recsql.model_traffic is
    'A/B test: each candidate''s share of users (by a stable hash of the user id); the active model has the rest';

-- Gives a candidate a share of users (0 ends its test). Only candidates whose state-shaping
-- parameters equal the active model's can be served side by side: they share its derived state.
create function recsql.set_traffic(p_model text, p_share double precision) returns void
language plpgsql as $$
declare
    v_model recsql.models;
    v_active jsonb;
    v_differs text;
begin
    lock table recsql.model_traffic in share row exclusive mode;
    if p_share is null or p_share < 0 or p_share >= 1 then
        raise exception 'share must be at least 0 and below 1, got %', p_share using errcode = '22023';
    end if;
    if p_share = 0 then
        delete from recsql.model_traffic where model = p_model;
        return;
    end if;
    select * into v_model from recsql.models where name = p_model;
    if not found or v_model.status <> 'candidate' then
        raise exception 'only a candidate model can take traffic; % is %', p_model, coalesce(v_model.status, 'unknown')
            using errcode = '22023';
    end if;
    select params into v_active from recsql.models where status = 'active';
    v_differs := recsql._shaping_changes(v_active, v_model.params);
    if v_differs is not null
       and not exists (select 1 from recsql.model_states st where st.model = p_model and st.status = 'live') then
        raise exception '% changes % (derived state), so it needs its own state to be served beside the active model',
                p_model, v_differs
            using errcode = '22023',
                  hint = format('Build it first: CALL recsql.build_model_state(%L) (recsql models build %s).', p_model, p_model);
    end if;
    insert into recsql.model_traffic (model, share) values (p_model, p_share)
    on conflict (model) do update set share = excluded.share;
    if (select count(*) from recsql.model_traffic) > 2 then
        raise exception 'at most two candidates take traffic at a time' using errcode = '22023';
    end if;
    if (select sum(share) from recsql.model_traffic) >= 1 then
        raise exception 'candidate shares add up to %, leaving nothing for the active model',
            (select sum(share) from recsql.model_traffic) using errcode = '22023';
    end if;
end
$$;

comment on function recsql.set_traffic(text, double precision) is
    'Gives a candidate a share of users for an online test (0 ends it); at most two, shares below 1 in all';

-- The model that serves a user: a stable hash of the id picks a bucket in [0, 1).
create function recsql.assign_model(p_user_id text) returns text
language sql stable parallel safe as $$
    with bucket as (
        select ('x' || substr(md5(coalesce(p_user_id, '')), 1, 8))::bit(32)::bigint / 4294967296.0 as b
    ), ranges as (
        select model, sum(share) over (order by model) as upto from recsql.model_traffic
    )
    select coalesce(
        (select r.model from ranges r, bucket where bucket.b < r.upto order by r.upto limit 1),
        (select name from recsql.models where status = 'active'))
$$;

comment on function recsql.assign_model(text) is 'The model serving a user in the current A/B split (stable per user id)';

-- Served lists, clicks, conversions and revenue per model over a time window.
create function recsql.model_outcomes(p_since timestamptz default now() - interval '14 days')
returns table (model text, lists_served bigint, lists_clicked bigint, lists_converted bigint, revenue numeric)
language sql stable as $$
    select coalesce(l.model, (select name from recsql.models where status = 'active')),
           count(*),
           count(*) filter (where exists (select 1 from recsql.events e
                                          where e.recommendation_id = l.recommendation_id and e.event_type = 'click')),
           count(*) filter (where exists (select 1 from recsql.events e join recsql.event_types t on t.name = e.event_type
                                          where e.recommendation_id = l.recommendation_id and t.is_conversion)),
           coalesce(sum((select sum(r.revenue) from recsql.recommendation_events r
                         where r.recommendation_id = l.recommendation_id and r.is_conversion)), 0)
    from recsql.recommendation_log l
    where l.served_at >= p_since
    group by 1
$$;

comment on function recsql.model_outcomes(timestamptz) is 'Lists served, clicked and converted, and revenue, per model since a time';

-- Picks the model serving a user and puts a candidate's query-time parameters in force for the
-- caller's transaction only (lists without a user get the active model). Returns its name.
create function recsql.serve_model(p_user_id text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
begin
    select * into v_model from recsql.models
    where name = case when p_user_id is null then (select name from recsql.models where status = 'active')
                      else recsql.assign_model(p_user_id) end;
    if v_model.status = 'candidate' then
        perform set_config('recsql.' || p.key, v_model.params ->> p.key, true)
        from recsql.model_parameters p
        where not p.shapes_state and v_model.params ? p.key;
    end if;
    return v_model.name;
end
$$;

comment on function recsql.serve_model(text) is
    'The model serving a user; a candidate''s query-time parameters are set for this transaction only';

-- Records a served list (called in the transaction that computed it).
create function recsql.log_served(p_id uuid, p_surface text, p_user_id text, p_anchors text[], p_items text[],
                                  p_scores real[], p_model text) returns void
language plpgsql as $$
begin
    -- A lost row costs one list's attribution, not an event: the commit need not wait for the disk.
    perform set_config('synchronous_commit', 'off', true);
    insert into recsql.recommendation_log (recommendation_id, surface, user_id, anchor_item_ids, item_ids, scores, model)
    values (p_id, p_surface, p_user_id, coalesce(p_anchors, '{}'), p_items, p_scores, p_model);
end
$$;

comment on function recsql.log_served(uuid, text, text, text[], text[], real[], text) is
    'Logs one served list for attribution (asynchronous commit)';
