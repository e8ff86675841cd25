-- 0005: the session tree as a materialized path, and the per-tree depth limit.
--
-- tree_path is the session's ancestors' ids and its own, root first, each as a 0x00 byte followed
-- by the 16 bytes of the uuid (17 bytes a level). A subtree is then one btree range scan:
-- tree_path >= P AND tree_path < P || 0x01 (keen.session_tree): every descendant's path continues
-- P with a 0x00 byte, and every other path greater than P differs from it inside P.
-- bytea because its comparison operators are LEAKPROOF: under row-level security the planner
-- only turns leakproof quals into index conditions (uuid[] comparisons are not leakproof and
-- fell back to a sequential scan). A btree entry holds about 2,700 bytes, so depth stays
-- under 159; keen.create_session caps it at 100 whatever the settings say. The recursive walk
-- over parent_session_id costs one index descent per node; the range scan one per subtree.
-- root_session_id is the id of the tree's root (a root's own id). A whole tree, read from its
-- root, is then one ordered scan of (root_session_id, session_depth, git_branch COLLATE "C", id):
-- no sort, so the walk grows linearly with the tree (a sort grows faster, and spills).
-- A BEFORE INSERT trigger (db/functions/sessions.sql) fills tree_path, root_session_id and
-- session_depth from the parent, so direct inserts (bulk loads, benchmarks) stay consistent too.
--
-- max_recursion_depth is the deepest session_depth allowed in the session's subtree (the least of
-- its own agent_options.max_depth and its parent's limit), set by keen.create_session; NULL
-- (rows inserted directly) reads as the default_max_session_depth setting.

ALTER TABLE keen.agent_sessions
    ADD COLUMN tree_path bytea,
    ADD COLUMN root_session_id uuid,
    ADD COLUMN max_recursion_depth integer CHECK (max_recursion_depth >= 0);

-- Rows written before this migration: derive their paths from the parent links.
WITH RECURSIVE walk AS (
    SELECT s.id, s.id AS root_session_id, '\x00'::bytea || pg_catalog.uuid_send(s.id) AS tree_path
      FROM keen.agent_sessions s
     WHERE s.parent_session_id IS NULL
    UNION ALL
    SELECT c.id, walk.root_session_id, walk.tree_path || '\x00'::bytea || pg_catalog.uuid_send(c.id)
      FROM walk
      JOIN keen.agent_sessions c ON c.parent_session_id = walk.id
)
UPDATE keen.agent_sessions s
   SET tree_path = walk.tree_path, root_session_id = walk.root_session_id
  FROM walk
 WHERE walk.id = s.id;

ALTER TABLE keen.agent_sessions
    ALTER COLUMN tree_path SET NOT NULL,
    ALTER COLUMN root_session_id SET NOT NULL,
    ADD CONSTRAINT agent_sessions_tree_path_check
        CHECK (pg_catalog.length(tree_path) = 17 * (session_depth + 1)),
    ADD CONSTRAINT agent_sessions_root_check
        CHECK ((parent_session_id IS NULL) = (root_session_id = id));

CREATE INDEX agent_sessions_tree_path_idx ON keen.agent_sessions (tree_path);
CREATE INDEX agent_sessions_tree_order_idx
    ON keen.agent_sessions (root_session_id, session_depth, git_branch COLLATE "C", id);
-- Sequential mode asks "does this parent have a running child?" on every create_session.
CREATE INDEX agent_sessions_running_children_idx ON keen.agent_sessions (parent_session_id)
    WHERE execution_status = 'running' AND parent_session_id IS NOT NULL;
-- list_sessions filtered by status, newest first.
CREATE INDEX agent_sessions_user_status_start_idx ON keen.agent_sessions (user_id, execution_status, start_time DESC);

COMMENT ON COLUMN keen.agent_sessions.tree_path IS
    'Ids of the ancestors and of the session itself, root first, each as 0x00 and its 16 bytes; a subtree is the range [P, P || 0x01).';
COMMENT ON COLUMN keen.agent_sessions.root_session_id IS
    'Id of the root of the session''s tree (its own id for a root).';
COMMENT ON COLUMN keen.agent_sessions.max_recursion_depth IS
    'Deepest session_depth allowed below this session (NULL: the default_max_session_depth setting).';
