-- Undoes 0005: the repeatable trigger that fills tree_path goes first, then the columns.
DROP TRIGGER IF EXISTS agent_sessions_tree_path ON keen.agent_sessions;
DROP TRIGGER IF EXISTS agent_sessions_tree_fixed ON keen.agent_sessions;
DROP FUNCTION IF EXISTS keen.agent_sessions_tree_path();
DROP INDEX IF EXISTS keen.agent_sessions_user_status_start_idx;
DROP INDEX IF EXISTS keen.agent_sessions_running_children_idx;
DROP INDEX IF EXISTS keen.agent_sessions_tree_order_idx;
DROP INDEX IF EXISTS keen.agent_sessions_tree_path_idx;
ALTER TABLE keen.agent_sessions
    DROP CONSTRAINT IF EXISTS agent_sessions_root_check,
    DROP CONSTRAINT IF EXISTS agent_sessions_tree_path_check,
    DROP COLUMN IF EXISTS root_session_id,
    DROP COLUMN IF EXISTS max_recursion_depth,
    DROP COLUMN IF EXISTS tree_path;
