-- 0010 down: the fold functions of 0009. Frozen: never edit after release.
create or replace function recsql._batch_reset() returns void
language plpgsql as $$
begin
    if to_regclass('pg_temp.recsql_batch') is null then
        create temp table recsql_batch (
            user_id text not null,
            item_id text not null,
            item_key integer,
            event_type text not null,
            value double precision,
            ts timestamptz not null,
            xid xid8 not null,
            seq bigint not null,
            ctx boolean not null default false
        ) on commit delete rows;
        create temp table recsql_pair_delta (
            kind "char" not null,
            item_a integer not null,
            item_b integer not null,
            n integer not null
        ) on commit delete rows;
        create temp table recsql_new_users (
            item_key integer not null,
            n integer not null
        ) on commit delete rows;
    else
        truncate pg_temp.recsql_batch, pg_temp.recsql_pair_delta, pg_temp.recsql_new_users;
    end if;
end
$$;

create or replace function recsql._batch_add_context() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq, ctx)
    with firsts as (
        select distinct on (b.user_id) b.user_id, b.xid, b.seq
        from pg_temp.recsql_batch b
        where not b.ctx
        order by b.user_id, b.xid, b.seq
    ), converting as (
        -- Only a conversion forms bought-together pairs, so only converting users need that window.
        select f.*
        from firsts f
        where f.user_id in (
            select b.user_id
            from pg_temp.recsql_batch b
            join recsql.event_types t on t.name = b.event_type
            where not b.ctx and t.is_conversion)
    ), earlier as (
        select c.*
        from firsts f
        cross join lateral (
            select e.user_id, e.item_id, e.event_type, e.value, e.ts, e.xid, e.seq
            from recsql.events e
            join recsql.event_types t on t.name = e.event_type
            where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.forms_pairs
            order by e.xid desc, e.seq desc
            limit v_settings.cooc_window
        ) c
        union
        select c.*
        from converting f
        cross join lateral (
            select e.user_id, e.item_id, e.event_type, e.value, e.ts, e.xid, e.seq
            from recsql.events e
            join recsql.event_types t on t.name = e.event_type
            where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.is_conversion
            order by e.xid desc, e.seq desc
            limit v_settings.purchase_window
        ) c
    )
    select x.user_id, x.item_id, i.item_key, x.event_type, x.value, x.ts, x.xid, x.seq, true
    from earlier x
    join recsql.items i on i.item_id = x.item_id;
end
$$;

create or replace function recsql._pair_delta(p_sign integer, p_from timestamptz, p_to timestamptz) returns bigint
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_deltas bigint;
begin
    select * into v_settings from recsql.settings;

    truncate pg_temp.recsql_pair_delta;

    insert into pg_temp.recsql_pair_delta (kind, item_a, item_b, n)
    with windowed as (
        select 'v'::"char" as kind, b.seq, b.item_key, b.ts, b.ctx,
               array_agg(b.item_key) over (
                   partition by b.user_id order by b.xid, b.seq
                   rows between v_settings.cooc_window preceding and 1 preceding) as prev
        from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
        where t.forms_pairs
        union all
        select 'p'::"char", b.seq, b.item_key, b.ts, b.ctx,
               array_agg(b.item_key) over (
                   partition by b.user_id order by b.xid, b.seq
                   rows between v_settings.purchase_window preceding and 1 preceding)
        from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
        where t.is_conversion
    ), formed as (
        -- distinct: an item seen twice in the window pairs once with the event.
        select distinct w.kind, w.seq, w.item_key as a, x.b
        from windowed w
        cross join lateral unnest(w.prev) as x(b)
        where not w.ctx and w.ts >= p_from and w.ts < p_to and w.item_key <> all (w.prev)
    )
    -- A pair is stored once, under (smaller key, larger key): both items' lists read it.
    select kind, least(a, b), greatest(a, b), p_sign * count(*)::integer
    from formed
    group by 1, 2, 3;

    get diagnostics v_deltas = row_count;
    return v_deltas;
end
$$;

-- Live model states: their copies back.
do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        perform recsql._copy_state_functions(v_schema);
    end loop;
end
$$;
