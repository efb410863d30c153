# Test-lab only: the `linear` strategy run by Mitogen (https://mitogen.networkgenomics.com),
# which keeps one Python interpreter per target and runs modules in it instead of one
# `docker exec` + AnsiballZ unpack + interpreter start per task. Molecule scenarios use it
# through .config/molecule/config.yml (ANSIBLE_STRATEGY_PLUGINS points here, so the path does
# not depend on where pip put the package); operators' runs and the `tpm` scenario use
# stock Ansible. Mitogen only takes over the short connection name `docker`.
from ansible.plugins.strategy import linear
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear


class StrategyModule(MitogenLinear):
    def run(self, iterator, play_context):
        # Plays on the controller alone (molecule's create/destroy, `connection: local`) run
        # stock: Mitogen's async runner never finishes molecule-plugins' async
        # docker_container jobs, and local plays gain nothing from it.
        if iterator._play.connection == "local":
            return linear.StrategyModule.run(self, iterator, play_context)
        return super().run(iterator, play_context)
