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
    select sum(x.v * array_fill(x.w::real, array[vector_dims(x.v)])::vector)
    from unnest(p_vectors, p_weights) as x(v, w)
$$;

comment on function recsql._weighted_sum(vector[], double precision[]) is
    'Weighted sum of vectors: the direction of a recency-weighted taste';

-- Nearest items to a vector in one space, through that space's HNSW index.
create function recsql._embedding_neighbors(p_space text, p_query vector, p_k integer)
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

-- Embedding similarity of candidate items to a weighted set of source items, over every enabled
-- space: per space the sources' weighted mean direction (the taste), its nearest items join the
-- candidates, and each candidate's score is the weighted mean cosine to the taste over the spaces
-- where the candidate has a vector (a new item with only a text vector is judged on its text).
create function recsql._embedding_scores(p_sources integer[], p_weights double precision[], p_n integer,
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
