-- Ingestion: what happens inside the client's transaction. It only appends (the event row and one
-- inbox row per statement), so concurrent writers never wait on each other's counters.

-- Generates an event id: time-ordered UUIDv7 where the server has it, so the id index appends.
do $$
begin
    if exists (select 1 from pg_proc where proname = 'uuidv7' and pronamespace = 'pg_catalog'::regnamespace) then
        execute $f$create function recsql.new_event_id() returns text language sql volatile parallel safe
            as 'select pg_catalog.uuidv7()::text'$f$;
    else
        execute $f$create function recsql.new_event_id() returns text language sql volatile parallel safe
            as 'select pg_catalog.gen_random_uuid()::text'$f$;
    end if;
end
$$;

comment on function recsql.new_event_id() is 'Generates an event id for events sent without one';

-- Fills the server-side columns the row did not get from their defaults: an id for an event sent
-- without one, and the inserting transaction and arrival time when a client supplied its own. A
-- row with all three right (every COPY of the ingest columns) skips the call (the trigger's WHEN).
create function recsql.events_before_insert() returns trigger
language plpgsql as $$
begin
    if new.event_id is null then
        new.event_id := recsql.new_event_id();
    end if;
    new.xid := pg_current_xact_id();
    new.arrived_at := now();
    return new;
end
$$;

comment on function recsql.events_before_insert() is
    'Fills event_id when missing and sets xid and arrived_at to the server''s values';

create trigger events_before_insert before insert on recsql.events
    for each row
    when (new.event_id is null or new.xid <> pg_current_xact_id() or new.arrived_at <> now())
    execute function recsql.events_before_insert();

-- Validates a whole statement at once and queues it for the folder; raising here undoes the statement.
create function recsql.events_after_insert() returns trigger
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_bad record;
    v_range record;
    v_schema text;
begin
    if current_setting('recsql.no_events', true) = 'on' then
        raise exception 'this transaction promised to insert no events (it added pairs or refreshed neighbour lists first)'
            using errcode = '55000',
                  hint = 'Insert events in a transaction of their own; folding does not wait for transactions that promised.';
    end if;

    select * into v_settings from recsql.settings;

    -- One pass over the statement's rows finds its range and whether any row is bad; only a bad
    -- statement pays for the queries that name the first offender.
    select pg_current_xact_id() as xid, min(n.seq) as first_seq, max(n.seq) as last_seq, count(*) as n,
           coalesce(bool_or(t.name is null), false) as bad_type,
           -- Retried deliveries: an id stored before this row, by another transaction (which
           -- committed, as the row is visible) or earlier in this one; of two copies in one
           -- statement, the later. One probe of the id index per row, here rather than in a row
           -- trigger, whose call costs more than the probe and stops COPY batching its inserts.
           -- The duplicates' seqs (null when none).
           array_agg(n.seq) filter (where exists (select from recsql.events e
                                                  where e.event_id = n.event_id
                                                    and (e.seq < n.seq or e.xid <> n.xid))) as duplicates,
           coalesce(bool_or(n.ts > now() + v_settings.max_future), false) as bad_ts,
           coalesce(bool_or(t.value_max is not null
                            and (n.value is null or n.value < t.value_min or n.value > t.value_max)), false) as bad_value
    into v_range
    from new_events n
    left join recsql.event_types t on t.name = n.event_type;

    if v_range.bad_type then
        select n.event_type into v_bad
        from new_events n
        where not exists (select 1 from recsql.event_types t where t.name = n.event_type)
        limit 1;
        raise exception 'unknown event type "%"', v_bad.event_type
            using errcode = '23503',
                  constraint = 'events_event_type_fkey',
                  hint = format('Known types: %s. Add a type with INSERT INTO recsql.event_types (name, weight) VALUES (...).',
                                (select string_agg(name, ', ' order by name) from recsql.event_types));
    end if;

    if v_range.bad_ts then
        select n.event_id, n.ts into v_bad
        from new_events n
        where n.ts > now() + v_settings.max_future
        limit 1;
        raise exception 'event "%" has timestamp % which is more than % in the future',
                v_bad.event_id, v_bad.ts, v_settings.max_future
            using errcode = '23514',
                  constraint = 'events_ts_check',
                  hint = 'Send the time the event happened (UTC, ISO 8601), or omit it to use the server time.';
    end if;

    if v_range.bad_value then
        select n.event_id, n.event_type, n.value, t.value_min, t.value_max into v_bad
        from new_events n
        join recsql.event_types t on t.name = n.event_type
        where t.value_max is not null and (n.value is null or n.value < t.value_min or n.value > t.value_max)
        limit 1;
        raise exception 'event "%" of type "%" needs a value between % and %, got %',
                v_bad.event_id, v_bad.event_type, v_bad.value_min, v_bad.value_max, coalesce(v_bad.value::text, 'none')
            using errcode = '23514',
                  constraint = 'events_value_range_check';
    end if;

    if v_range.duplicates is not null then
        -- Removed again before anything reads them; the deferred unique check at commit skips
        -- deleted rows.
        perform set_config('recsql.dropping_duplicates', 'on', true);
        delete from recsql.events e where e.seq = any (v_range.duplicates);
        perform set_config('recsql.dropping_duplicates', 'off', true);
        -- For callers that count what a COPY stored (recsql import): this transaction's total.
        perform set_config('recsql.duplicates_dropped',
                           (coalesce(nullif(current_setting('recsql.duplicates_dropped', true), ''), '0')::bigint
                            + cardinality(v_range.duplicates))::text, true);
        -- The range of the rows kept (no probes: the seqs are known).
        select min(n.seq), max(n.seq), count(*) into v_range.first_seq, v_range.last_seq, v_range.n
        from new_events n
        where n.seq <> all (v_range.duplicates);
    end if;

    if v_range.n > 0 then
        insert into recsql.event_inbox (xid, first_seq, last_seq, n)
        values (v_range.xid, v_range.first_seq, v_range.last_seq, v_range.n);
        -- Each model's shadow state folds the same events (recsql.model_states).
        for v_schema in select schema_name from recsql.model_states loop
            execute format('insert into %I.event_inbox (xid, first_seq, last_seq, n) values ($1, $2, $3, $4)', v_schema)
            using v_range.xid, v_range.first_seq, v_range.last_seq, v_range.n;
        end loop;
    end if;
    return null;
end
$$;

comment on function recsql.events_after_insert() is
    'Rejects unknown types, future timestamps and out-of-range values for the whole statement; drops '
    'retried event ids; queues the statement for folding';

create trigger events_after_insert after insert on recsql.events
    referencing new table as new_events
    for each statement execute function recsql.events_after_insert();

-- Events are facts: changing one would silently desynchronise derived state.
create function recsql.events_guard() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' and (current_setting('recsql.forgetting', true) = 'on'
                             or current_setting('recsql.dropping_duplicates', true) = 'on') then
        return null;
    end if;
    raise exception '% on recsql.events is not allowed', tg_op
        using errcode = '55000',
              hint = 'Events are immutable. Use recsql.forget_user(user_id) to delete a user''s events.';
end
$$;

comment on function recsql.events_guard() is
    'Blocks UPDATE, DELETE and TRUNCATE of events outside recsql.forget_user() (and the removal of duplicates)';

create trigger events_guard before update or delete or truncate on recsql.events
    for each statement execute function recsql.events_guard();

-- Keeps updated_at honest for catalog edits.
create function recsql.items_touch() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

comment on function recsql.items_touch() is 'Sets items.updated_at on every update';

create trigger items_touch before update on recsql.items
    for each row execute function recsql.items_touch();

-- The API entry point for one event; same effect as an INSERT, plus a result saying what happened.
create function recsql.track(
    user_id text,
    item_id text,
    event_type text,
    ts timestamptz default now(),
    value double precision default null,
    event_id text default null,
    session_id text default null,
    properties jsonb default '{}',
    recommendation_id uuid default null
) returns table (id text, seq bigint, duplicate boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_event_id text := coalesce(track.event_id, recsql.new_event_id());
    v_seq bigint;
begin
    select e.seq into v_seq from recsql.events e where e.event_id = v_event_id;
    if found then
        return query select v_event_id, v_seq, true;
        return;
    end if;
    -- A copy stored by a transaction still open is not visible here: the commit that comes second
    -- fails on events_event_id_key, and its retry finds the first (duplicate = true).
    insert into recsql.events as e (event_id, user_id, item_id, event_type, value, ts, session_id, properties,
                                    recommendation_id)
    values (v_event_id, track.user_id, track.item_id, track.event_type, track.value,
            coalesce(track.ts, now()), track.session_id, coalesce(track.properties, '{}'), track.recommendation_id)
    returning e.seq into v_seq;
    -- An earlier copy in this transaction's open statement cannot exist (one row), so the row stays.
    return query select v_event_id, v_seq, false;
end
$$;

comment on function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb, uuid) is
    'Records one event idempotently (same event_id twice counts once); returns its id and whether it was a duplicate';
