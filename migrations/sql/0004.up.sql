-- 0004: model versions, their parameters, offline evaluation results, online A/B traffic, and
-- query-time parameter overrides for the served model. Frozen: never edit after release.

create function recsql._query_param(p_key text, p_default text) returns text
language sql stable parallel safe as $$
    select coalesce(nullif(current_setting('recsql.' || p_key, true), ''), p_default)
$$;


comment on function recsql._query_param(text, text) is
    'Transaction-local override recsql.<key> of a query-time parameter, else the given settings value';

-- recommend() now reads the recent history once; this helper has no caller left.
drop function recsql._user_excluded(text, boolean, boolean);

create or replace function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select recsql._query_param('history_length', st.history_length::text)::integer as history_length,
               recsql._query_param('history_half_life', st.history_half_life::text)::double precision
                   as history_half_life
        from recsql.settings st
    ), recent as (
        select e.item_id, e.event_type, e.value,
               (row_number() over (order by e.xid desc, e.seq desc) - 1)::integer as rank
        from (
            -- One ordered index scan per id (the user and any linked anonymous ids), then merged.
            select e.item_id, e.event_type, e.value, e.xid, e.seq
            from unnest(recsql._user_ids(p_user_id)) as ids(id)
            cross join lateral (
                select x.item_id, x.event_type, x.value, x.xid, x.seq
                from recsql.events x
                where x.user_id = ids.id
                order by x.xid desc, x.seq desc
                limit (select history_length from s)
            ) e
            order by e.xid desc, e.seq desc
            limit (select history_length from s)
        ) e
    ), per_type as (
        select r.item_id, r.event_type, count(*) as n, avg(r.value) as mean_value, min(r.rank) as rank
        from recent r
        group by r.item_id, r.event_type
    ), per_item as (
        select pt.item_id,
               sum(t.weight * ln(1 + pt.n) / ln(2)
                   * case when t.value_max is null then 1 else coalesce(pt.mean_value / t.value_max, 1) end) as strength,
               min(pt.rank) as rank,
               bool_or(t.is_conversion) as converted
        from per_type pt
        join recsql.event_types t on t.name = pt.event_type
        group by pt.item_id
    )
    select i.item_key,
           p.item_id,
           greatest(p.strength, 0) * power(2::double precision, -p.rank / s.history_half_life),
           p.converted
    from per_item p
    cross join s
    left join recsql.items i on i.item_id = p.item_id
$$;


comment on function recsql._user_sources(text) is
    'Weights of the items in the user''s recent history: damped per-type counts times recency';

create or replace function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable as $$
    with s as (
        select recsql._query_param('embedding_weight', embedding_weight::text)::double precision as w,
               greatest(2 * p_k, 20) as pool
        from recsql.settings
    ), contributions as materialized (
        select ps.item_key, ps.source_key, ps.contribution
        from recsql._pair_scores('v', p_sources, p_weights) ps
        where ps.item_key <> all (p_excluded)
    ), cooc as materialized (
        select c.item_key, sum(c.contribution) as score from contributions c group by c.item_key
    ), emb as materialized (
        select x.item_key, x.similarity
        from s
        cross join lateral recsql._embedding_scores(
            p_sources, p_weights, s.pool,
            array(select c.item_key from cooc c order by c.score desc, c.item_key limit (select pool from s))) x
        where s.w > 0 and x.item_key <> all (p_excluded)
    ), scored as (
        select coalesce(c.item_key, e.item_key) as item_key,
               case when not exists (select 1 from emb) then c.score
                    else (1 - s.w) * coalesce(c.score / nullif((select max(score) from cooc), 0), 0)
                         + s.w * coalesce(e.similarity, 0) end as score,
               c.item_key is null as by_embedding
        from cooc c
        full join emb e on e.item_key = c.item_key
        cross join s
    ), personal as (
        -- Rank on scores alone; the catalog is consulted only to filter, and for the k winners.
        select sc.item_key, sc.score, sc.by_embedding
        from scored sc
        where sc.item_key not in (select h.item_key from recsql.items h where h.hidden_at is not null)
          and ((p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = sc.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock)))
        order by sc.score desc, sc.item_key
        limit p_k
    ), fill as (
        select st.item_key, st.popularity
        from recsql.item_stats st
        join recsql.items i on i.item_key = st.item_key
        where st.popularity > 0
          and i.hidden_at is null
          and (p_category is null or i.category = p_category)
          and (not p_in_stock_only or i.in_stock)
          and st.item_key <> all (p_excluded)
          and st.item_key not in (select item_key from personal)
        order by st.popularity desc, st.item_key
        limit p_k
    )
    select r.item_id, r.score, r.reason
    from (
        select i.item_id, p.score,
               coalesce('similar to ' || src.item_id, 'matches your taste') as reason,
               0 as grp, p.score as ord, p.item_key
        from personal p
        join recsql.items i on i.item_key = p.item_key
        left join lateral (
            select c.source_key from contributions c
            where c.item_key = p.item_key
            order by c.contribution desc, c.source_key
            limit 1
        ) top on true
        left join recsql.items src on src.item_key = top.source_key
        union all
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;


comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence blended with embeddings, then trending fill';

create or replace function recsql._similar(p_item_id text, p_k integer, p_method text)
returns table (item_id text, score double precision, together integer)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_key integer;
    v_method text := p_method;
    v_weight double precision;
    v_warm boolean;
    v_pool integer;
begin
    perform recsql._check_k(p_k);
    if v_method is not null and v_method not in ('cooccurrence', 'embedding', 'hybrid') then
        raise exception 'method must be cooccurrence, embedding or hybrid, got "%"', v_method
            using errcode = '22023';
    end if;
    select i.item_key into v_key from recsql.items i where i.item_id = p_item_id;
    if v_key is null then
        return;
    end if;
    if v_method is null then
        -- hybrid when the item has a vector (cold items then still get neighbours)
        v_method := case when exists (select 1 from recsql.item_embeddings e where e.item_key = v_key)
                         then 'hybrid' else 'cooccurrence' end;
    end if;
    if v_method = 'cooccurrence' then
        return query select n.item_id, n.score, n.together from recsql._neighbors('v', p_item_id, p_k) n;
        return;
    end if;
    select recsql._query_param('embedding_weight', embedding_weight::text)::double precision
    into v_weight from recsql.settings;
    v_warm := exists (select 1 from recsql.neighbor_lists l where l.kind = 'v' and l.item_key = v_key);
    v_pool := greatest(4 * p_k, 50);
    return query
    with cooc as (
        select u.neighbor as item_key, u.score, u.together
        from recsql.neighbor_lists l
        cross join lateral unnest(l.neighbors, l.scores, l.together) as u(neighbor, score, together)
        where l.kind = 'v' and l.item_key = v_key
    ), emb as (
        select x.item_key, x.similarity
        from recsql._embedding_scores(array[v_key], array[1::double precision], v_pool,
                                      array(select c.item_key from cooc c)) x
    ), scored as (
        select coalesce(c.item_key, e.item_key) as item_key,
               case when v_method = 'embedding' or not v_warm then coalesce(e.similarity, 0)
                    else (1 - v_weight) * coalesce(c.score / nullif((select max(score) from cooc), 0), 0)
                         + v_weight * coalesce(e.similarity, 0) end as score,
               c.together
        from cooc c
        full join emb e on e.item_key = c.item_key
    )
    select i.item_id, sc.score, coalesce(sc.together, 0)
    from scored sc
    join recsql.items i on i.item_key = sc.item_key
    where sc.item_key <> v_key and i.hidden_at is null
      and (v_method <> 'embedding' or sc.score > 0)
    order by sc.score desc, sc.item_key
    limit p_k;
end
$$;


comment on function recsql._similar(text, integer, text) is
    'Similar items by co-occurrence, embeddings, or both blended (hybrid)';

create or replace function recsql.session_recommend(item_ids text[], k integer default 10, category text default null,
                                         in_stock_only boolean default false)
returns table (item_id text, score double precision, reason text)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_half_life double precision;
begin
    perform recsql._check_k(k);
    select recsql._query_param('history_half_life', history_half_life::text)::double precision
    into v_half_life from recsql.settings;
    select coalesce(array_agg(i.item_key), '{}'),
           coalesce(array_agg(power(2::double precision, -(cardinality(item_ids) - u.pos) / v_half_life)), '{}')
    into v_sources, v_weights
    from unnest(coalesce(item_ids, '{}')) with ordinality as u(id, pos)
    join recsql.items i on i.item_id = u.id;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_sources, k, category, coalesce(in_stock_only, false)) r;
end
$$;


comment on function recsql.session_recommend(text[], integer, text, boolean) is
    'Recommendations for an anonymous session from the items it viewed, most recent last';

create or replace function recsql.recommend(
    user_id text,
    k integer default 10,
    category text default null,
    in_stock_only boolean default false,
    exclude_purchased boolean default true,
    exclude_seen boolean default false
) returns table (item_id text, score double precision, reason text)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_recent_excluded integer[];
    v_excluded integer[];
    v_purchased boolean := coalesce(exclude_purchased, true);
    v_seen boolean := coalesce(exclude_seen, false);
begin
    perform recsql._check_k(k);
    if recommend.user_id is null then
        raise exception 'recommend needs a user id' using errcode = '22004';
    end if;
    -- The recent history once: sources, and the recent items to leave out (not folded yet).
    select coalesce(array_agg(s.item_key), '{}'), coalesce(array_agg(s.weight), '{}'),
           coalesce(array_agg(s.item_key) filter (where v_seen or (v_purchased and s.converted)), '{}')
    into v_sources, v_weights, v_recent_excluded
    from recsql._user_sources(recommend.user_id) s
    where s.item_key is not null;
    select coalesce(array_agg(distinct x.item_key), '{}') into v_excluded
    from (
        select u.item_key
        from recsql.user_item_events u
        join recsql.event_types t on t.name = u.event_type
        where u.user_id = any (recsql._user_ids(recommend.user_id)) and (v_seen or (v_purchased and t.is_conversion))
        union all
        select unnest(v_recent_excluded)
    ) x;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_excluded, k, category, coalesce(in_stock_only, false)) r;
end
$$;


comment on function recsql.recommend(text, integer, text, boolean, boolean, boolean) is
    'Personalised recommendations: co-occurrence neighbours of the user''s recent items, trending as fallback';

create or replace function recsql.similar_items(item_id text, k integer default 10, method text default null)
returns table (item_id text, score double precision, together integer)
language sql stable rows 10 as $$
    select s.item_id, s.score, s.together
    from recsql._similar(similar_items.item_id, similar_items.k, similar_items.method) s
$$;


comment on function recsql.similar_items(text, integer, text) is
    'Similar items by method cooccurrence, embedding or hybrid (default: hybrid when the item has a vector)';

create or replace function recsql._weighted_sum(p_vectors vector[], p_weights double precision[]) returns vector
language sql immutable parallel safe as $$
    select sum(x.v * array_fill(x.w::real, array[vector_dims(x.v)])::vector)
    from unnest(p_vectors, p_weights) as x(v, w)
$$;


comment on function recsql._weighted_sum(vector[], double precision[]) is
    'Weighted sum of vectors: the direction of a recency-weighted taste';

create or replace function recsql._embedding_neighbors(p_space text, p_query vector, p_k integer)
returns table (item_key integer, similarity double precision)
language plpgsql stable rows 50 as $$
declare
    v_dim integer;
begin
    select dim into v_dim from recsql.embedding_spaces where name = p_space and enabled;
    if v_dim is null or p_query is null or vector_dims(p_query) <> v_dim then
        return;
    end if;
    -- The index returns about ef_search candidates: keep it above k.
    perform set_config('hnsw.ef_search', greatest(40, least(1000, 2 * p_k))::text, true);
    return query execute format(
        'select e.item_key, 1 - (e.embedding::vector(%1$s) <=> $1::vector(%1$s))'
        ' from recsql.item_embeddings e where e.space = %2$L'
        ' order by e.embedding::vector(%1$s) <=> $1::vector(%1$s) limit $2', v_dim, p_space)
    using p_query, p_k;
end
$$;


comment on function recsql._embedding_neighbors(text, vector, integer) is
    'Approximate nearest items (HNSW, cosine) to a vector in one embedding space';

create or replace function recsql._embedding_scores(p_sources integer[], p_weights double precision[], p_n integer,
                                         p_extra integer[] default '{}')
returns table (item_key integer, similarity double precision)
language sql stable rows 100 as $$
    with src as (
        select x.k, max(x.w) as w from unnest(p_sources, p_weights) as x(k, w) where x.w > 0 group by x.k
    ), taste as (
        select sp.name, sp.weight, recsql._weighted_sum(array_agg(e.embedding), array_agg(src.w)) as v
        from recsql.embedding_spaces sp
        join recsql.item_embeddings e on e.space = sp.name
        join src on src.k = e.item_key
        where sp.enabled and sp.weight > 0
        group by sp.name, sp.weight
    ), candidates as (
        select n.item_key from taste t cross join lateral recsql._embedding_neighbors(t.name, t.v, p_n) n
        union
        select unnest(p_extra)
    )
    select c.item_key, sum(t.weight * (1 - (e.embedding <=> t.v))) / sum(t.weight)
    from candidates c
    cross join taste t
    join recsql.item_embeddings e on e.space = t.name and e.item_key = c.item_key
    where c.item_key <> all (p_sources)
    group by c.item_key
$$;


comment on function recsql._embedding_scores(integer[], double precision[], integer, integer[]) is
    'Weighted-mean cosine of candidates (nearest neighbours plus p_extra) to the sources'' taste, over the spaces they have';

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
    ('embedding_weight', 'number', false, 'share of embedding similarity in hybrid scores (0..1)');

comment on table recsql.model_parameters is 'The parameters a model version may set; shapes_state ones need derived state rebuilt';

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
        'embedding_weight', s.embedding_weight)
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
        embedding_weight = (p_params ->> 'embedding_weight')::double precision;
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

-- Applies a params document to this database: settings, weights, and the derived state they shape.
create function recsql.apply_params(p_params jsonb) returns text
language plpgsql as $$
declare
    v_before jsonb := recsql.current_params();
    v_params jsonb := recsql.check_params(p_params, v_before);
    v_state_changed boolean;
begin
    v_state_changed := exists (
        select 1 from recsql.model_parameters m
        where m.shapes_state and (v_before -> m.key) is distinct from (v_params -> m.key));
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

-- Makes a model the active one in one transaction: its parameters take effect (derived state is
-- rebuilt when they shape it), the previous active model is retired and kept for rollback.
create function recsql.promote_model(p_name text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
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
    v_how := recsql.apply_params(v_model.params);
    delete from recsql.model_traffic;  -- a test compares candidates with the active model: it ends here
    update recsql.models set status = 'retired', retired_at = now() where status = 'active';
    update recsql.models set status = 'active', promoted_at = now(), retired_at = null where name = p_name;
    return v_how;
end
$$;

comment on function recsql.promote_model(text) is
    'Puts a model in force and makes it active in one transaction (rebuilding state its parameters shape)';

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
    select string_agg(m.key, ', ' order by m.key) into v_differs
    from recsql.model_parameters m
    where m.shapes_state and (v_model.params -> m.key) is distinct from (v_active -> m.key);
    if v_differs is not null then
        raise exception '% changes % (derived state), so it cannot be served beside the active model', p_model, v_differs
            using errcode = '22023',
                  hint = 'Evaluate it offline (recsql evaluate) and promote it; online tests cover query-time parameters.';
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
