-- 0003: item embeddings in pgvector (spaces, vectors, HNSW indexes, work queue), hybrid scoring in
-- recommend() and similar_items(method), NOTIFY from fold(). Frozen: never edit after release.

-- Item embeddings (pgvector): named spaces, one HNSW index per space, and the queue the embedding
-- worker (`recsql worker`) takes its work from. Queries blend them with co-occurrence (30_query.sql).

create extension if not exists vector;

create table recsql.embedding_spaces (
    name text constraint embedding_spaces_pkey primary key
        constraint embedding_spaces_name_check check (name ~ '^[a-z][a-z0-9_]{0,30}$'),
    dim integer not null constraint embedding_spaces_dim_check check (dim between 2 and 2000),
    model text not null,
    model_version text,
    weight double precision not null default 1
        constraint embedding_spaces_weight_check check (weight >= 0),
    enabled boolean not null default true,
    fit_meta jsonb not null default '{}',
    fitted_at timestamptz,
    updated_at timestamptz not null default now()
);

insert into recsql.embedding_spaces (name, dim, model, weight) values
    ('behavior', 64, 'ppmi-svd', 1),
    ('text', 384, 'all-MiniLM-L6-v2', 0.5);

comment on table recsql.embedding_spaces is
    'Embedding spaces: dimension, the model that fills it and when, and its weight in hybrid scores';
comment on column recsql.embedding_spaces.fit_meta is 'What the model needs to embed one more item (behavior: fold-in statistics)';

create table recsql.item_embeddings (
    space text not null constraint item_embeddings_space_fkey references recsql.embedding_spaces on delete cascade,
    item_key integer not null,
    embedding vector not null,
    source_hash text,
    support bigint,
    pair_total bigint,
    model_version text,
    writes integer not null default 1,
    updated_at timestamptz not null default now(),
    constraint item_embeddings_pkey primary key (space, item_key)
);

-- One HNSW index per space on its dimension (pgvector indexes need a fixed one); queries order by
-- embedding::vector(dim) <=> q with space = '...' to use it. recsql.set_space_dim() rebuilds it.
create index item_embeddings_behavior_hnsw on recsql.item_embeddings
    using hnsw ((embedding::vector(64)) vector_cosine_ops) where space = 'behavior';
create index item_embeddings_text_hnsw on recsql.item_embeddings
    using hnsw ((embedding::vector(384)) vector_cosine_ops) where space = 'text';

comment on table recsql.item_embeddings is 'One vector per item and space, written by the embedding worker';
comment on column recsql.item_embeddings.source_hash is 'text space: hash of the text embedded, so unchanged items are skipped';
comment on column recsql.item_embeddings.support is 'behavior space: the item''s events when its vector was computed';
comment on column recsql.item_embeddings.pair_total is 'behavior space: the item''s co-occurrence total then (used to fold in other items)';
comment on column recsql.item_embeddings.writes is 'How many times the vector was written (a worker never embeds an item twice for one change)';

create table recsql.embedding_queue (
    space text not null,
    item_key integer not null,
    queued_at timestamptz not null default now(),
    attempts integer not null default 0,
    constraint embedding_queue_pkey primary key (space, item_key)
);

create index embedding_queue_order_idx on recsql.embedding_queue (space, queued_at);

comment on table recsql.embedding_queue is
    'Items waiting for a vector; workers claim rows with FOR UPDATE SKIP LOCKED and delete them with the write';

-- Queues items whose text changed for the text space and wakes the workers.
create function recsql.items_queue_embeddings() returns trigger
language plpgsql as $$
begin
    if not exists (select 1 from recsql.embedding_spaces where name = 'text' and enabled) then
        return null;
    end if;
    if tg_op = 'INSERT' then
        insert into recsql.embedding_queue (space, item_key)
        select 'text', n.item_key
        from new_items n
        where n.title is not null or n.category is not null or n.properties ? 'description'
        on conflict (space, item_key) do nothing;
    else
        insert into recsql.embedding_queue (space, item_key)
        select 'text', n.item_key
        from new_items n
        join old_items o on o.item_key = n.item_key
        where (n.title, n.category, n.properties) is distinct from (o.title, o.category, o.properties)
        on conflict (space, item_key) do nothing;
    end if;
    if found then
        perform pg_notify('recsql_embeddings', 'text');
    end if;
    return null;
end
$$;

comment on function recsql.items_queue_embeddings() is
    'Queues new or edited items for the text space and NOTIFYs recsql_embeddings';

create trigger items_queue_embeddings_insert after insert on recsql.items
    referencing new table as new_items
    for each statement execute function recsql.items_queue_embeddings();

create trigger items_queue_embeddings_update after update on recsql.items
    referencing old table as old_items new table as new_items
    for each statement execute function recsql.items_queue_embeddings();

-- Queues items whose interactions grew enough since their behaviour vector was computed.
create function recsql.queue_behavior_refresh(max_items integer default 10000) returns integer
language plpgsql as $$
declare
    v_n integer;
begin
    insert into recsql.embedding_queue (space, item_key)
    select 'behavior', st.item_key
    from recsql.item_stats st
    join recsql.embedding_spaces sp on sp.name = 'behavior' and sp.enabled and sp.fitted_at is not null
    cross join recsql.settings s
    left join recsql.item_embeddings e on e.space = 'behavior' and e.item_key = st.item_key
    where st.n_users >= 2
      and (e.item_key is null or st.n_events >= s.behavior_refresh_ratio * coalesce(e.support, 0))
      and not exists (select 1 from recsql.embedding_queue q where q.space = 'behavior' and q.item_key = st.item_key)
    order by st.n_events desc
    limit max_items
    on conflict (space, item_key) do nothing;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;

comment on function recsql.queue_behavior_refresh(integer) is
    'Queues items without a behaviour vector, or whose events grew by settings.behavior_refresh_ratio';

-- Sum of vectors scaled by weights (pgvector has no scalar product); only its direction matters.
create function recsql._weighted_sum(p_vectors vector[], p_weights double precision[]) returns vector
language sql immutable parallel safe as $$
    select array_agg(s.total::real order by s.i)::vector
    from (
        select u.i, sum(u.x * w.w) as total
        from unnest(p_vectors, p_weights) as w(v, w)
        cross join lateral unnest(w.v::real[]) with ordinality as u(x, i)
        group by u.i
    ) s
$$;

comment on function recsql._weighted_sum(vector[], double precision[]) is
    'Weighted sum of vectors: the direction of a recency-weighted taste';

-- Nearest items to a vector in one space, through that space's HNSW index.
create function recsql._embedding_neighbors(p_space text, p_query vector, p_k integer)
returns table (item_key integer, similarity double precision)
language plpgsql stable as $$
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

-- Embedding similarity of candidate items to a weighted set of source items, over every enabled
-- space: per space the sources' weighted mean direction (the taste), its nearest items join the
-- candidates, and each candidate's score is the spaces' weighted mean cosine to the taste.
create function recsql._embedding_scores(p_sources integer[], p_weights double precision[], p_n integer,
                                         p_extra integer[] default '{}')
returns table (item_key integer, similarity double precision)
language sql stable as $$
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
    select c.item_key, sum(t.weight * (1 - (e.embedding <=> t.v))) / (select sum(weight) from taste)
    from candidates c
    cross join taste t
    join recsql.item_embeddings e on e.space = t.name and e.item_key = c.item_key
    where c.item_key <> all (p_sources)
    group by c.item_key
$$;

comment on function recsql._embedding_scores(integer[], double precision[], integer, integer[]) is
    'Weighted-mean cosine of candidates (nearest neighbours plus p_extra) to the sources'' taste in each space';

-- Changes a space's dimension: its vectors are dropped and its index rebuilt (the worker refits).
create function recsql.set_space_dim(p_space text, p_dim integer) returns void
language plpgsql as $$
begin
    update recsql.embedding_spaces
    set dim = p_dim, fitted_at = null, fit_meta = '{}', updated_at = now()
    where name = p_space;
    if not found then
        raise exception 'no embedding space "%"', p_space using errcode = '42704';
    end if;
    delete from recsql.item_embeddings where space = p_space;
    execute format('drop index if exists recsql.%I', 'item_embeddings_' || p_space || '_hnsw');
    execute format('create index %I on recsql.item_embeddings using hnsw ((embedding::vector(%s)) vector_cosine_ops)'
                   ' where space = %L', 'item_embeddings_' || p_space || '_hnsw', p_dim, p_space);
    execute format('create or replace view recsql.%I as select i.item_id, e.embedding::vector(%s) as embedding,'
                   ' e.updated_at from recsql.item_embeddings e join recsql.items i on i.item_key = e.item_key'
                   ' where e.space = %L', p_space || '_embeddings', p_dim, p_space);
    if p_space = 'text' then
        insert into recsql.embedding_queue (space, item_key)
        select 'text', item_key from recsql.items
        where title is not null or category is not null or properties ? 'description'
        on conflict do nothing;
    end if;
end
$$;

comment on function recsql.set_space_dim(text, integer) is
    'Sets a space''s dimension: drops its vectors, rebuilds its HNSW index and view (the worker refills it)';

alter table recsql.settings
    add column embedding_weight double precision not null default 0.2
        constraint settings_embedding_weight_check check (embedding_weight between 0 and 1),
    add column behavior_refresh_ratio double precision not null default 1.5
        constraint settings_behavior_refresh_ratio_check check (behavior_refresh_ratio > 1),
    add column behavior_refit_interval interval not null default '1 day'
        constraint settings_behavior_refit_interval_check check (behavior_refit_interval >= interval '1 minute');

comment on column recsql.settings.embedding_weight is
    'Share of embedding similarity in hybrid scores (0: co-occurrence only, 1: embeddings only)';
comment on column recsql.settings.behavior_refresh_ratio is
    'An item''s behaviour vector is refreshed once its events grew by this factor since it was computed';
comment on column recsql.settings.behavior_refit_interval is
    'The behaviour space is refitted from scratch when its last fit is older than this';

create or replace function recsql.fold() returns bigint
language plpgsql as $$
declare
    v_horizon xid8;
    v_n bigint;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Every transaction of this database older than the horizon has ended, so no event can still
    -- appear before the ones folded here in (xid, seq) order.
    v_horizon := recsql._fold_horizon();
    v_n := 0;
    -- An idle poll stops here: no scratch-table truncation (catalog churn) every 100 ms.
    if exists (select 1 from recsql.event_inbox q where q.xid < v_horizon) then
        perform recsql._batch_reset();
        with taken as (
            delete from recsql.event_inbox q where q.xid < v_horizon
            returning q.xid, q.first_seq, q.last_seq
        )
        insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
        select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
        from taken q
        -- One primary-key range scan per inbox row; OFFSET 0 keeps the planner, misled by the inbox's
        -- always-stale statistics, from turning this into a scan of every event.
        cross join lateral (
            select x.user_id, x.item_id, x.event_type, x.value, x.ts, x.xid, x.seq
            from recsql.events x
            where x.seq between q.first_seq and q.last_seq and x.xid = q.xid
            offset 0
        ) e
        left join recsql.items i on i.item_id = e.item_id;
        get diagnostics v_n = row_count;
    end if;
    if v_n > 0 then
        perform recsql._batch_resolve_items();
        perform recsql._batch_add_context();
        perform recsql._apply_stats();
        select coalesce(cooc_horizon, '-infinity') into v_cooc_horizon from recsql.fold_state;
        perform recsql._apply_pairs(1, v_cooc_horizon, 'infinity');
    end if;

    if v_n > 50000 then
        -- A bulk fold changes the derived tables faster than autovacuum re-samples them; fresh
        -- statistics keep the next folds and refreshes on good plans. Only tables that changed by
        -- a fifth since their last analyze: re-sampling millions of pairs every chunk is not free.
        analyze recsql.item_stats;
        if (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
            from pg_stat_user_tables where relid = 'recsql.item_pairs'::regclass) then
            analyze recsql.item_pairs;
        end if;
        if (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
            from pg_stat_user_tables where relid = 'recsql.user_item_events'::regclass) then
            analyze recsql.user_item_events;
        end if;
    end if;

    -- An idle poll writes nothing, except a heartbeat every few seconds for fold_status.
    update recsql.fold_state
    set horizon = greatest(horizon, v_horizon),
        folded_events = folded_events + v_n,
        last_fold_at = now()
    where v_n > 0 or last_fold_at is null or last_fold_at < now() - interval '5 seconds';
    if v_n > 0 then
        -- Wakes the embedding worker. Sent here, once per fold, rather than by the events trigger:
        -- NOTIFY serialises committing transactions, which every writer would then pay for.
        perform pg_notify('recsql_folded', v_n::text);
    end if;
    return v_n;
end
$$;


comment on function recsql.fold() is
    'Folds committed events into the derived tables (not the neighbour lists); returns the count';

create or replace function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable as $$
    with s as (
        select embedding_weight as w, greatest(4 * p_k, 50) as pool from recsql.settings
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

drop function recsql.similar_items(text, integer);

create function recsql._similar(p_item_id text, p_k integer, p_method text)
returns table (item_id text, score double precision, together integer)
language plpgsql stable as $$
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
    select embedding_weight into v_weight from recsql.settings;
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

create function recsql.similar_items(item_id text, k integer default 10, method text default null)
returns table (item_id text, score double precision, together integer)
language sql stable as $$
    select s.item_id, s.score, s.together
    from recsql._similar(similar_items.item_id, similar_items.k, similar_items.method) s
$$;


comment on function recsql.similar_items(text, integer, text) is
    'Similar items by method cooccurrence, embedding or hybrid (default: hybrid when the item has a vector)';

-- Vectors per space with the type the HNSW index is built on, so that
-- `order by embedding <=> (select ...) limit 10` uses the index.
create view recsql.behavior_embeddings as
select i.item_id, e.embedding::vector(64) as embedding, e.updated_at
from recsql.item_embeddings e
join recsql.items i on i.item_key = e.item_key
where e.space = 'behavior';

comment on view recsql.behavior_embeddings is 'Behaviour vectors (64-d by default) by item id, for nearest-neighbour SQL';

create view recsql.text_embeddings as
select i.item_id, e.embedding::vector(384) as embedding, e.updated_at
from recsql.item_embeddings e
join recsql.items i on i.item_key = e.item_key
where e.space = 'text';

comment on view recsql.text_embeddings is 'Text vectors (all-MiniLM-L6-v2, 384-d) by item id, for nearest-neighbour SQL';
